"""Resumable training: `tf.train.CheckpointManager` driven by a Keras callback."""

import os

import keras
import tensorflow as tf
from absl import logging

from kbert.training.gradients import accumulation_pending


class TrainingCheckpoint:
    """Model + optimizer + dropout RNG checkpoints in `directory`, for resuming after a kill.

    Wraps `tf.train.Checkpoint(model=..., optimizer=..., dropout_seeds=...)`
    and `tf.train.CheckpointManager` (atomic writes, keeps the newest
    `max_to_keep`). The step of a checkpoint is `optimizer.iterations`, which
    is saved with it. The states of the model's Keras `SeedGenerator`s
    (dropout) are saved too, so a resumed run draws the same dropout masks as
    an uninterrupted one.

    Args:
        model: a built Keras model.
        optimizer: its Keras optimizer (built by `restore_or_initialize`).
        directory: str, where `ckpt-STEP.*` files and the `checkpoint` index go.
        max_to_keep: int, checkpoints kept on disk.
    """

    def __init__(self, model, optimizer, directory, max_to_keep=3):
        self.model = model
        self.optimizer = optimizer
        self.directory = directory
        seeds = [v.value for v in model.variables if "seed_generator_state" in v.path]
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, **({"dropout_seeds": seeds} if seeds else {})
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=max_to_keep, step_counter=None
        )

    def restore_or_initialize(self):
        """Restores the newest checkpoint, if any, and returns its step (0 if none).

        Builds the optimizer's variables first so every saved slot has a
        variable to land in. Call inside the strategy scope.

        Raises:
            AssertionError (from TensorFlow): the checkpoint does not match the
                model (a variable missing or of another shape).
        """
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        status = self.checkpoint.restore(latest)
        status.assert_existing_objects_matched()
        step = int(self.optimizer.iterations.numpy())
        logging.info("Restored %s at step %d.", latest, step)
        return step

    def save(self):
        """Writes a checkpoint numbered by the optimizer step; returns its path."""
        step = int(self.optimizer.iterations.numpy())
        return self.manager.save(checkpoint_number=step)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a `TrainingCheckpoint` every `every_n_steps` optimizer steps and at the end.

    Args:
        training_checkpoint: `TrainingCheckpoint`.
        every_n_steps: int >= 1.
        save_at_epoch_end: bool; also save at the end of every epoch, *after*
            the callbacks before this one (put it after an evaluation
            callback): the last step of an epoch is then saved only once the
            epoch's evaluation is done, so a kill during evaluation resumes
            before that step and the evaluation is not lost.

    Raises:
        ValueError: `every_n_steps` < 1.
    """

    def __init__(self, training_checkpoint, every_n_steps, save_at_epoch_end=False):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1.")
        self.training_checkpoint = training_checkpoint
        self.every_n_steps = every_n_steps
        self.save_at_epoch_end = save_at_epoch_end

    def on_train_batch_end(self, batch, logs=None):
        if accumulation_pending(self.training_checkpoint.optimizer):
            return  # mid-accumulation: the step's update is not applied yet
        step = int(self.training_checkpoint.optimizer.iterations.numpy())
        last_of_epoch = self.save_at_epoch_end and batch + 1 == (self.params or {}).get("steps")
        if step % self.every_n_steps == 0 and not last_of_epoch:
            path = self.training_checkpoint.save()
            logging.info("Saved checkpoint %s", path)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_at_epoch_end:
            self._save_if_new()

    def on_train_end(self, logs=None):
        self._save_if_new()

    def _save_if_new(self):
        latest = self.training_checkpoint.manager.latest_checkpoint
        step = int(self.training_checkpoint.optimizer.iterations.numpy())
        if latest is None or not latest.endswith(f"-{step}"):
            self.training_checkpoint.save()


def latest_checkpoint(directory):
    """Returns the newest checkpoint prefix in `directory`, or None."""
    if not os.path.isdir(directory):
        return None
    return tf.train.latest_checkpoint(directory)
