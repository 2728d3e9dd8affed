"""Learned absolute position embedding (BERT, Devlin et al. 2019, section 3.2)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kbert")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding with `max_position_embeddings` rows.

    Returns the first `sequence_length` rows of a trainable table, broadcast to
    the batch, so it can be added to token embeddings. This is BERT's
    `position_embeddings` (google-research/bert `modeling.embedding_postprocessor`,
    keras-hub `PositionEmbedding`).

    A sequence longer than the table raises an error that names both numbers:
    at trace time when the length is static, and through a runtime assertion
    (TensorFlow backend) when it is dynamic. The lookup is a slice, never a
    `gather` past the end, which on GPU would silently return zeros.

    Args:
        max_position_embeddings: int > 0. Number of positions (table rows).
        initializer: initializer for the table. Defaults to
            `TruncatedNormal(stddev=0.02)` as in BERT.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Call arguments:
        inputs: float tensor `(batch_size, sequence_length, hidden_size)`;
            only its shape is used.

    Returns:
        Tensor `(batch_size, sequence_length, hidden_size)` in the layer's
        compute dtype.

    Raises:
        ValueError: `max_position_embeddings` not a positive int, input not
            rank 3, or a static `sequence_length > max_position_embeddings`.
        tf.errors.InvalidArgumentError: a dynamic sequence length exceeds
            `max_position_embeddings` (TensorFlow backend).

    Example:
    >>> layer = PositionEmbedding(max_position_embeddings=16)
    >>> layer(keras.ops.zeros((2, 5, 8))).shape
    (2, 5, 8)
    """

    def __init__(self, max_position_embeddings, initializer=None, **kwargs):
        super().__init__(**kwargs)
        if (
            not isinstance(max_position_embeddings, int)
            or max_position_embeddings <= 0
        ):
            raise ValueError(
                "`max_position_embeddings` must be a positive int; received "
                f"{max_position_embeddings!r}."
            )
        self.max_position_embeddings = max_position_embeddings
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.TruncatedNormal(stddev=0.02)
        )

    def build(self, inputs_shape):
        if len(inputs_shape) != 3:
            raise ValueError(
                "PositionEmbedding expects inputs of shape (batch_size, "
                f"sequence_length, hidden_size); received {inputs_shape}."
            )
        self._check_static_length(inputs_shape[1])
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_position_embeddings, inputs_shape[-1]),
            initializer=self.initializer,
        )

    def _check_static_length(self, sequence_length):
        if (
            sequence_length is not None
            and sequence_length > self.max_position_embeddings
        ):
            raise ValueError(
                f"Sequence length {sequence_length} exceeds "
                f"max_position_embeddings={self.max_position_embeddings}. "
                "Truncate the input or use a model with more positions."
            )

    def call(self, inputs):
        static_length = inputs.shape[1]
        self._check_static_length(static_length)
        sequence_length = ops.shape(inputs)[1]
        table = self.embeddings
        if static_length is None and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            check = tf.debugging.assert_less_equal(
                tf.cast(sequence_length, "int32"),
                tf.constant(self.max_position_embeddings, "int32"),
                message=(
                    "Sequence length exceeds max_position_embeddings="
                    f"{self.max_position_embeddings} (values: sequence length, "
                    "max_position_embeddings)"
                ),
            )
            with tf.control_dependencies([check]):
                table = tf.identity(table)
        positions = ops.slice(
            table, (0, 0), (sequence_length, ops.shape(table)[1])
        )
        return ops.broadcast_to(
            ops.expand_dims(positions, 0), ops.shape(inputs)
        )

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_position_embeddings": self.max_position_embeddings,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
