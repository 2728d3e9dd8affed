"""`SparseCategoricalAccuracy` whose argmax is one TensorFlow op (a train-step metric)."""

import keras
from keras import ops


def argmax_last_axis(logits):
    """Index of the largest value along the last axis, as int32.

    On the TensorFlow backend this is one `tf.argmax`. `keras.ops.argmax`
    adds four passes over the input to order -0.0 below +0.0 (its
    flush-to-zero fix, jax-ml/jax#24280): on BERT's `(640, 30522)` masked-LM
    logits those took 17 of its 21 ms per step (Zen 4, 2 threads). The
    answers differ only where the largest value is a zero that appears with
    both signs (then the first such index is returned). Other backends:
    `keras.ops.argmax`.

    Args:
        logits: float tensor `(..., num_classes)`.

    Returns:
        int32 tensor `(...)`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    return ops.cast(ops.argmax(logits, axis=-1), "int32")


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where `argmax(y_pred)` equals the integer label, else 0.0.

    `keras.metrics.sparse_categorical_accuracy`'s contract, with
    `argmax_last_axis`.

    Args:
        y_true: int or float labels `(...)` or `(..., 1)` (a non-integral
            float label matches no class, as in Keras; labels outside
            `[0, num_classes)` count as misses).
        y_pred: logits or probabilities `(..., num_classes)`.

    Returns:
        float tensor `(...)` in `keras.backend.floatx()`.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    predicted = argmax_last_axis(y_pred)
    if "float" in str(y_true.dtype):  # compared as floats, as Keras does: 2.7 matches nothing
        matches = ops.equal(y_true, ops.cast(predicted, y_true.dtype))
    else:
        matches = ops.equal(ops.cast(y_true, "int32"), predicted)
    return ops.cast(matches, keras.backend.floatx())


@keras.saving.register_keras_serializable(package="kbert")
class SparseCategoricalAccuracy(keras.metrics.MeanMetricWrapper):
    """`keras.metrics.SparseCategoricalAccuracy` with a one-op argmax (see `argmax_last_axis`).

    The (weighted) mean of `sparse_categorical_accuracy` over all updates:
    `sum(weight * match) / sum(weight)`, as Keras' metric. `compile_pretrainer`
    uses it for the masked-LM accuracy, where Keras' argmax cost about 1% of
    a `bert_small` train step.

    Args:
        name: str, metric name.
        dtype: dtype of the accumulators (default float32).

    Call arguments (`update_state`):
        y_true: int labels `(...)` or `(..., 1)`.
        y_pred: logits `(..., num_classes)`.
        sample_weight: optional weights broadcastable to `y_true`'s shape.

    Returns (`result`): float scalar in [0, 1].
    """

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(fn=sparse_categorical_accuracy, name=name, dtype=dtype)
        self._direction = "up"

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
