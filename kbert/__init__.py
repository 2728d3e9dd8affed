"""kbert: BERT as Keras 3 layers for TensorFlow users.

Subpackages: `kbert.layers` (Keras layers), `kbert.models` (config, presets,
encoder, pretrainer), `kbert.text` (in-graph WordPiece with tensorflow-text),
`kbert.data` (pretraining `tf.data` pipelines), `kbert.training` (strategies,
optimizer, losses, checkpoints) and `kbert.serving` (SavedModel and TFLite).
"""

from kbert import layers, models

__version__ = "0.1.0"
__all__ = ["layers", "models", "__version__"]
