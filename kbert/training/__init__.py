"""Training utilities: strategies, optimizer, losses, checkpoints, fine-tuning (TensorFlow)."""

from kbert.training.checkpointing import CheckpointCallback, TrainingCheckpoint
from kbert.training.distribute import STRATEGIES, create_strategy, split_cpu
from kbert.training.finetune_run import export_task, train_task
from kbert.training.finetuning import TASKS, compile_for_task, epoch_schedule, fit_epochs
from kbert.training.losses import MaskedLMLoss
from kbert.training.optimization import WarmupLinearDecay, create_adamw
from kbert.training.pretraining import compile_pretrainer, evaluate_masked_lm

__all__ = [
    "STRATEGIES",
    "TASKS",
    "CheckpointCallback",
    "MaskedLMLoss",
    "TrainingCheckpoint",
    "WarmupLinearDecay",
    "compile_for_task",
    "compile_pretrainer",
    "create_adamw",
    "create_strategy",
    "epoch_schedule",
    "evaluate_masked_lm",
    "export_task",
    "fit_epochs",
    "split_cpu",
    "train_task",
]
