"""Pretraining losses whose value does not depend on the number of replicas."""

import keras
import tensorflow as tf


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
        return keras.losses.sparse_categorical_crossentropy(
            y_true, keras.ops.cast(y_pred, "float32"), from_logits=True
        )

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
