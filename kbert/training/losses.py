"""Pretraining losses whose value does not depend on the number of replicas."""

import functools

import keras
import tensorflow as tf


def _cross_entropy_forward(logits, labels, peak):
    # Rows of logits (N, V), labels (N,), each row's max (N,): -log softmax(logits)[label]
    # and logsumexp per row.
    log_sum_exp = tf.math.log(tf.reduce_sum(tf.exp(logits - peak[:, None]), -1)) + peak
    picked = tf.gather(logits, labels[:, None], batch_dims=1)[:, 0]
    return log_sum_exp - picked, log_sum_exp


def _cross_entropy_backward(upstream, logits, labels, log_sum_exp):
    # d/dlogits = softmax(logits) - one_hot(label), times the incoming gradient per row.
    probabilities = tf.exp(logits - log_sum_exp[:, None])
    one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=probabilities.dtype)
    return (probabilities - one_hot) * upstream[:, None]


@functools.cache
def _compiled(function):
    return tf.function(function, jit_compile=True, reduce_retracing=True)


def sparse_softmax_cross_entropy(labels, logits):
    """Per-position softmax cross-entropy with integer labels, as a train step should run it.

    `-log softmax(logits)[..., label]`, the value of
    `keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)`
    (to float32 rounding), computed as TensorFlow's row max, one XLA kernel
    forward (log-sum-exp and the label's logit) and one XLA kernel backward
    (`softmax - one_hot`), keeping the logits and one log-sum-exp per row
    for the backward pass. On the masked-LM logits of a `bert_small` step
    (640 x 30522, float32) forward plus backward took 17-24 ms against
    45.7 ms for TensorFlow's `SparseSoftmaxCrossEntropyWithLogits` (Zen 4,
    2 threads).

    Args:
        labels: int tensor `(...)` (or `(..., 1)`, as Keras takes), class ids
            in `[0, vocab_size)`.
        logits: float tensor `(..., vocab_size)`; computed in float32.

    Returns:
        float32 tensor `(...)`.

    Raises:
        ValueError: `labels` whose static shape is not that of `logits`
            without its last axis (both shapes named; an
            `InvalidArgumentError` when known only at run time).
        tf.errors.InvalidArgumentError: a label outside `[0, vocab_size)`
            (named with the limit; under `jit_compile` XLA drops the check).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank is not None and logits.shape.rank is not None:
        if labels.shape.rank == logits.shape.rank and labels.shape[-1] == 1:
            labels = tf.squeeze(labels, -1)  # Keras' (..., 1) labels
        if labels.shape.rank != logits.shape.rank - 1 or not labels.shape.is_compatible_with(
            logits.shape[:-1]
        ):
            raise ValueError(
                "`labels` must have the shape of `logits` without its last (class) axis; "
                f"received labels {labels.shape} and logits {logits.shape}."
            )
    vocab_size = tf.shape(logits)[-1]
    rows = tf.reshape(logits, [-1, vocab_size])
    flat = tf.reshape(labels, [-1])
    with tf.control_dependencies([
        tf.debugging.assert_equal(
            tf.shape(labels), tf.shape(logits)[:-1],
            message="`labels` must have the shape of `logits` without its last (class) axis",
        ),
        tf.debugging.assert_non_negative(flat, message="masked-LM label ids must be >= 0"),
        tf.debugging.assert_less(flat, vocab_size, message="masked-LM label ids must be < vocab_size"),
    ]):
        flat = tf.identity(flat)

    @tf.custom_gradient
    def cross_entropy(rows):
        # Each row's max by TensorFlow's kernel: XLA's CPU row reduction took
        # about 3x as long (10 vs 3.5 ms on 640 x 30522 float32, Zen 4).
        loss, log_sum_exp = _compiled(_cross_entropy_forward)(rows, flat, tf.reduce_max(rows, -1))

        def grad(upstream):
            return _compiled(_cross_entropy_backward)(upstream, rows, flat, log_sum_exp)

        return loss, grad

    return tf.reshape(cross_entropy(rows), tf.shape(labels))


@keras.saving.register_keras_serializable(package="kbert")
class MaskedLMLoss(keras.losses.Loss):
    """Masked-LM cross-entropy, normalised by the masked tokens of the global batch.

    loss = sum_{replicas, examples, slots} w * CE(label, logits) / sum_{global batch} w

    where `w` is `masked_lm_weights` (1 for a real prediction, 0 for a padding
    slot), passed as `sample_weight`. google-research/bert normalises the
    same way on one device (`run_pretraining.get_masked_lm_output`). Under a
    `tf.distribute` strategy each replica returns its share of the global mean,
    `local_sum / global_count`, computed with a cross-replica sum of the counts;
    that is Keras 3's convention for a "scaled" per-replica loss (Keras sums
    gradients over replicas and multiplies reported losses by the replica
    count), so the gradients and the logged loss equal the single-replica
    values on the same global batch even when replicas see different
    numbers of masked tokens.

    The per-token cross-entropy is `sparse_softmax_cross_entropy` (XLA
    kernels; Keras' values).

    Call arguments:
        y_true: int `(batch_size, num_predictions)`, `masked_lm_ids`.
        y_pred: float `(batch_size, num_predictions, vocab_size)` logits.
        sample_weight: float `(batch_size, num_predictions)`,
            `masked_lm_weights`; all ones if omitted.

    Returns:
        float32 scalar.
    """

    def __init__(self, name="masked_lm_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return sparse_softmax_cross_entropy(y_true, y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        per_token = self.call(y_true, y_pred)
        if sample_weight is None:
            weights = tf.ones_like(per_token)
        else:
            weights = tf.cast(tf.reshape(sample_weight, tf.shape(per_token)), tf.float32)
        local_sum = tf.reduce_sum(per_token * weights)
        count = tf.reduce_sum(weights)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        return tf.math.divide_no_nan(local_sum, count)
