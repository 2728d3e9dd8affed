"""Training utilities: strategies, optimizer, losses, checkpoints (TensorFlow)."""

from kbert.training.checkpointing import CheckpointCallback, TrainingCheckpoint
from kbert.training.distribute import STRATEGIES, create_strategy, split_cpu
from kbert.training.losses import MaskedLMLoss
from kbert.training.optimization import WarmupLinearDecay, create_adamw
from kbert.training.pretraining import compile_pretrainer, evaluate_masked_lm

__all__ = [
    "STRATEGIES",
    "CheckpointCallback",
    "MaskedLMLoss",
    "TrainingCheckpoint",
    "WarmupLinearDecay",
    "compile_pretrainer",
    "create_adamw",
    "create_strategy",
    "evaluate_masked_lm",
    "split_cpu",
]
