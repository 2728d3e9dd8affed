"""Fine-tuning tasks: each turns files into batches, a model and an evaluation.

A task object is what `trainers/finetune.py` drives: it reads the training
and evaluation files once, tokenizes them once, and then gives

  * `build_model(encoder)`: the task model on a (pretrained) encoder;
  * `epoch_dataset(epoch)`: that epoch's length-bucketed batches, the same in
    every run (so a resumed run continues at the same batch);
  * `steps_per_epoch`;
  * `evaluate(model)`: the task's standard metrics on the evaluation file;
  * `settings()`: what a resumed run must not change (label list, columns);
  * `export(model, tokenizer, export_dir, sequence_length)`: the task's
    serving artifacts, each checked against `model`;
  * `length_note`: one line on what `sequence_length` did to the data.
"""

from kbert.training.tasks.classification import ClassificationTask
from kbert.training.tasks.common import next_version
from kbert.training.tasks.squad import SquadTask
from kbert.training.tasks.tagging import TaggingTask

__all__ = ["ClassificationTask", "SquadTask", "TaggingTask", "next_version"]
