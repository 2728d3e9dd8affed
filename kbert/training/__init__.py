"""Training utilities: strategies, optimizer, losses, checkpoints, fine-tuning (TensorFlow)."""

from kbert.training.checkpointing import CheckpointCallback, TrainingCheckpoint
from kbert.training.distribute import STRATEGIES, create_strategy, split_cpu
from kbert.training.finetune_run import export_task, train_task
from kbert.training.finetuning import (
    TASKS,
    compile_for_task,
    epoch_schedule,
    fit_epochs,
)
from kbert.training.gradients import (
    GlobalBatchMixin,
    LossScaleOptimizer,
    accumulation_pending,
    clip_by_global_norm,
)
from kbert.training.guards import (
    NonFiniteGuard,
    NonFiniteLossError,
    check_static_shapes,
)
from kbert.training.lamb import Lamb
from kbert.training.losses import MaskedLMLoss
from kbert.training.multi_worker import (
    WorkerCheckpoint,
    WorkerTask,
    barrier,
    create_multi_worker_strategy,
    parse_tf_config,
    shard_for_workers,
)
from kbert.training.optimization import (
    OPTIMIZERS,
    AdamW,
    WarmupLinearDecay,
    create_adamw,
    create_optimizer,
)
from kbert.training.pretraining import (
    compile_pretrainer,
    evaluate_masked_lm,
    init_from_checkpoint,
)

__all__ = [
    "OPTIMIZERS",
    "STRATEGIES",
    "TASKS",
    "AdamW",
    "CheckpointCallback",
    "GlobalBatchMixin",
    "Lamb",
    "LossScaleOptimizer",
    "MaskedLMLoss",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "TrainingCheckpoint",
    "WarmupLinearDecay",
    "WorkerCheckpoint",
    "WorkerTask",
    "accumulation_pending",
    "barrier",
    "check_static_shapes",
    "clip_by_global_norm",
    "compile_for_task",
    "compile_pretrainer",
    "create_adamw",
    "create_multi_worker_strategy",
    "create_optimizer",
    "create_strategy",
    "epoch_schedule",
    "evaluate_masked_lm",
    "export_task",
    "fit_epochs",
    "init_from_checkpoint",
    "parse_tf_config",
    "shard_for_workers",
    "split_cpu",
    "train_task",
]
