"""kbert: BERT as Keras 3 layers for TensorFlow users.

Subpackages: `kbert.layers` (Keras layers), `kbert.models` (config, presets,
encoder, pretrainer, task models), `kbert.text` (in-graph WordPiece,
packers and text preprocessing with tensorflow-text), `kbert.data`
(pretraining pipelines; TSV, CoNLL and SQuAD readers; batching),
`kbert.metrics` (GLUE, tagging and SQuAD metrics), `kbert.training`
(strategies, optimizer, losses, checkpoints, fine-tuning tasks),
`kbert.checkpoints` (HF, Google, Model Garden, keras-hub) and
`kbert.serving` (SavedModel and TFLite).
"""

from kbert import layers, models

__version__ = "0.1.0"
__all__ = ["layers", "models", "__version__"]
