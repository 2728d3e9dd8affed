"""A version-guarded fix that makes Keras 3 `model.fit` run under multi-worker `MultiWorkerMirroredStrategy`.

Keras' TensorFlow trainer (3.0 to at least 3.15.1) fails on every
multi-worker `fit` (keras-team/keras#20329, #20585); `install_keras_fix`
replaces the two functions involved with wrappers that act only under a
multi-worker strategy. `kbert.training.multi_worker.create_multi_worker_strategy`
installs it; `multi_worker` re-exports these names.
"""

import keras
import tensorflow as tf
from absl import logging

# Keras versions whose TensorFlow trainer fails under multi-worker MWMS. The
# bug is open upstream (keras-team/keras#20329, #20585); 3.15.1 is the newest
# checked. On a newer Keras the fix is not installed: if
# tests/test_multi_worker.py then shows the bug gone, nothing is to be done;
# if it shows the bug, raise the bound.
AFFECTED_KERAS = ((3, 0), (3, 16))  # [from, to)
FIX_PARTS = ("symbolic_build", "reduce_per_replica")
_ORIGINALS = {}


def keras_needs_fix(version=None):
    """Whether Keras `version` (default: the installed one) is in `AFFECTED_KERAS`."""
    parts = (version or keras.version()).split(".")
    major_minor = tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts[:2])
    return AFFECTED_KERAS[0] <= major_minor < AFFECTED_KERAS[1]


def install_keras_fix(parts=FIX_PARTS):
    """Makes Keras 3 `model.fit`/`evaluate` work under multi-worker `MultiWorkerMirroredStrategy`.

    Two bugs in `keras/src/backend/tensorflow/trainer.py` (Keras 3.0 to at
    least 3.15.1; keras-team/keras#20329 and #20585), hit by every
    multi-worker `fit` (BERT's dict inputs show the first as a dict):

    1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch and
       calls `strategy.reduce("MEAN", batch, axis=None)` on the whole
       `(x, y, sample_weight)` structure; MWMS reduces one tensor at a time
       and fails with `ValueError: Attempt to convert a value
       ({'token_ids': PerReplica...}) with an unsupported type (<class
       'dict'>) to a Tensor`. The build only needs the batch's structure,
       shapes and dtypes, so the fix builds from this worker's local part
       of the batch (`strategy.experimental_local_results(v)[0]`): no
       collective, nothing else changes.
    2. `reduce_per_replica(..., reduction="auto"/"mean")` reduces each step's
       scalar logs with `strategy.reduce("MEAN", v, axis=0)` when the strategy
       spans workers; `axis=0` reduces along a tensor dimension a scalar does
       not have: `ValueError: Invalid reduction dimension 0 for input with 0
       dimensions`. The fix reduces with `axis=None`, the mean over replicas,
       which is what Keras does on one worker (`tf.reduce_mean` over the
       stacked per-replica values) and what `strategy.reduce` means by it.

    Both are replaced by wrappers that act only when Keras' own multi-worker
    test (`_collective_all_reduce_multi_worker`) holds and otherwise call the
    original, so single-worker strategies are untouched. Installed only when
    `keras_needs_fix()`; idempotent; `uninstall_keras_fix` undoes it.

    Args:
        parts: the fixes to install, a subset of `FIX_PARTS`
            ("symbolic_build" for bug 1, "reduce_per_replica" for bug 2).

    Returns:
        tuple of the parts installed now or before (empty when this Keras
        does not need the fix).

    Raises:
        ValueError: an unknown part.
        RuntimeError: this Keras lacks the functions the fix replaces (the
            version bound is wrong; the message says so).
    """
    unknown = set(parts) - set(FIX_PARTS)
    if unknown:
        raise ValueError(f"Unknown fix parts {sorted(unknown)}; use a subset of {FIX_PARTS}.")
    if not keras_needs_fix():
        logging.info("Keras %s is outside %s: the multi-worker fix is not installed.",
                     keras.version(), AFFECTED_KERAS)
        return ()
    from keras.src.backend.tensorflow import trainer as tf_trainer

    for owner, name in ((tf_trainer, "_collective_all_reduce_multi_worker"),
                        (tf_trainer, "reduce_per_replica"),
                        (tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build")):
        if not hasattr(owner, name):
            raise RuntimeError(
                f"Keras {keras.version()} has no {owner.__name__}.{name}; kbert's multi-worker fix "
                "does not fit this version. Adjust kbert.training.keras_fix.AFFECTED_KERAS."
            )
    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    if "symbolic_build" in parts and "symbolic_build" not in _ORIGINALS:
        original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
        _ORIGINALS["symbolic_build"] = original_build

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = self.distribute_strategy
            if iterator is not None and self._distribute_strategy is not None and multi_worker(
                strategy
            ):
                for _, _, batches in iterator:
                    data_batch = keras.tree.map_structure(
                        lambda v: strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues) else v,
                        next(batches),
                    )
                    break
                iterator = None
            return original_build(self, iterator=iterator, data_batch=data_batch)

        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    if "reduce_per_replica" in parts and "reduce_per_replica" not in _ORIGINALS:
        original_reduce = tf_trainer.reduce_per_replica
        _ORIGINALS["reduce_per_replica"] = original_reduce

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and multi_worker(strategy):
                return keras.tree.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None), values
                )
            return original_reduce(values, strategy, reduction)

        tf_trainer.reduce_per_replica = reduce_per_replica
    return tuple(p for p in FIX_PARTS if p in _ORIGINALS)


def uninstall_keras_fix():
    """Restores the Keras functions `install_keras_fix` replaced (for tests)."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if "symbolic_build" in _ORIGINALS:
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _ORIGINALS.pop("symbolic_build")
    if "reduce_per_replica" in _ORIGINALS:
        tf_trainer.reduce_per_replica = _ORIGINALS.pop("reduce_per_replica")
