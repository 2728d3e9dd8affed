"""Checks that stop a run before it wastes time or writes bad state: a NaN/Inf loss
or weights, and inputs whose shapes are not static (TPU, XLA)."""

import keras
import numpy as np
import tensorflow as tf

from kbert.training.gradients import unwrap


class NonFiniteLossError(FloatingPointError):
    """The training loss (or a weight) became NaN or Inf; the message names the step."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops `fit` with `NonFiniteLossError` when a loss or a weight is NaN or Inf.

    Put it *first* in the callback list, before `CheckpointCallback`: Keras
    calls the callbacks of a batch in order, so raising here means the
    checkpoint callback never sees that step and no checkpoint of bad weights
    is written (Keras' `TerminateOnNaN` only sets `stop_training`, after which
    the later callbacks of that batch, and `on_train_end`, still run).

    After every batch, each logged value whose name ends in `loss` (Keras
    logs the running mean of the epoch, which turns NaN with the first NaN
    batch) is checked. A finite loss can still be followed by an update that
    overflows the weights (a learning rate far too large), so with
    `check_weights_every` the weights themselves are also checked at steps
    that are multiples of it (pass the checkpoint interval) and at the end of
    every epoch and of training, i.e. before any checkpoint is written.

    The step named is `optimizer.iterations` after the batch, the number a
    `TrainingCheckpoint` of that moment would carry (with
    `steps_per_execution=k` the bad step is one of the last k).

    Args:
        check_weights_every: optional int >= 1, see above.

    Raises:
        ValueError: `check_weights_every` < 1.
        NonFiniteLossError (from `fit`): naming the step, the batch of the
            epoch and the losses (or the first non-finite weights).
    """

    def __init__(self, check_weights_every=None):
        super().__init__()
        if check_weights_every is not None and check_weights_every < 1:
            raise ValueError(f"check_weights_every={check_weights_every} must be >= 1.")
        self.check_weights_every = check_weights_every
        self._all_finite = None

    def _step(self):
        return int(unwrap(self.model.optimizer).iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        losses = {k: float(np.asarray(v)) for k, v in (logs or {}).items() if k.endswith("loss")}
        bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
        step = self._step()
        if bad:
            raise NonFiniteLossError(
                f"Non-finite training loss at step {step} (batch {batch} of the epoch): {bad}. "
                "Stopped before a checkpoint of this step was written; lower the learning rate, "
                "check the data of this step, or resume from the last checkpoint."
            )
        if self.check_weights_every and step % self.check_weights_every == 0:
            self._check_weights(f"step {step}")

    def on_epoch_end(self, epoch, logs=None):
        if self.check_weights_every:
            self._check_weights(f"step {self._step()} (end of epoch {epoch})")

    def on_train_end(self, logs=None):
        if self.check_weights_every:
            self._check_weights(f"step {self._step()} (end of training)")

    def _check_weights(self, where):
        weights = self.model.trainable_weights
        if self._all_finite is None:
            self._all_finite = tf.function(
                lambda: tf.stack([tf.reduce_all(tf.math.is_finite(w.value)) for w in weights])
            )
        finite = self._all_finite().numpy()
        if not finite.all():
            names = [w.path for w, ok in zip(weights, finite) if not ok]
            raise NonFiniteLossError(
                f"Non-finite weights at {where}: {names[:5]}{' ...' if len(names) > 5 else ''} "
                f"({len(names)} of {len(weights)}). Stopped before a checkpoint was written."
            )


def check_static_shapes(dataset, batch_size=None):
    """Raises unless every feature of `dataset` has a fully known shape (TPU, XLA).

    TPUs (and `jit_compile` without recompiling per shape) need each batch to
    have the same shape: batch with `drop_remainder=True` and pad sequences
    to a fixed length.

    Args:
        dataset: a `tf.data.Dataset` (or its `element_spec`), e.g. the
            `(x, y, sample_weight)` batches given to `fit`.
        batch_size: optional int, the per-batch size every feature must have.

    Returns:
        dict feature path (e.g. "x/token_ids") -> static shape tuple.

    Raises:
        ValueError: naming each feature whose shape has an unknown dimension
            (the batch dimension: "use drop_remainder=True"; another one:
            "pad to a fixed length"), or whose batch size is not `batch_size`.
    """
    spec = dataset.element_spec if isinstance(dataset, tf.data.Dataset) else dataset
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        spec = dict(zip(("x", "y", "sample_weight"), spec))
    shapes, problems = {}, []
    for path, leaf in keras.tree.flatten_with_path(spec):
        name = "/".join(str(p) for p in path) or "element"
        shape = leaf.shape
        if shape.rank is None:
            problems.append(f"{name} has unknown rank: give it a fixed shape")
            continue
        dims = tuple(shape.as_list())
        shapes[name] = dims
        if dims and dims[0] is None:
            problems.append(f"{name} has shape {dims}: unknown batch size, batch with "
                            "drop_remainder=True")
        elif None in dims[1:]:
            problems.append(f"{name} has shape {dims}: pad dimension {dims.index(None)} to a "
                            "fixed length")
        elif batch_size is not None and dims and dims[0] != batch_size:
            problems.append(f"{name} has batch size {dims[0]}, not {batch_size}")
    if problems:
        raise ValueError("Static shapes are required (TPU/XLA): " + "; ".join(problems) + ".")
    return shapes
