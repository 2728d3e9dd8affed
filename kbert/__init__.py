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

# Importing these registers every Keras object kbert saves in `.keras` files
# (layers, models, tokenizer and packer layers, the learning-rate schedule and
# loss of a compiled pretrainer), so `import kbert` is all a loader needs.
from kbert import layers, models, text, training

__version__ = "0.1.0"
__all__ = ["layers", "models", "text", "training", "__version__"]
