"""BERT's masked-LM head (Devlin et al. 2019, section 3.1 "Task #1";
google-research/bert `run_pretraining.get_masked_lm_output`)."""

import keras
from keras import ops

from kbert.layers.activations import get_activation


def _gather_positions(sequence_output, positions):
    """Rows `sequence_output[b, positions[b, p]]` as `(B, P, D)`; negative positions count from the end.

    On TensorFlow one row gather (`tf.gather` with `batch_dims=1`), whose
    gradient is the `B * P` gathered rows: `keras.ops.take_along_axis`
    transposes the whole `(B, S, D)` sequence output and gathers element by
    element, forward and backward (about 5 ms of a `bert_small` train step,
    against under 1 ms). Positions outside `[-S, S)` raise
    `InvalidArgumentError` naming the range (a check in the graph, which
    XLA drops: under `jit_compile` such positions are clamped).

    Raises:
        TypeError: `positions` is not an integer tensor.
    """
    if not ("int" in str(positions.dtype)):
        raise TypeError(
            f"`masked_lm_positions` must hold integer positions; received dtype {positions.dtype}."
        )
    if keras.backend.backend() != "tensorflow":
        positions = ops.cast(positions, "int32")
        return ops.take_along_axis(sequence_output, ops.expand_dims(positions, -1), axis=1)
    import tensorflow as tf

    length = tf.shape(sequence_output, out_type=positions.dtype)[1]
    checks = [
        tf.debugging.assert_less(
            positions, length,
            message="`masked_lm_positions` holds a position >= the sequence length"),
        tf.debugging.assert_greater_equal(
            positions, -length,
            message="`masked_lm_positions` holds a position < -(the sequence length)"),
    ]
    with tf.control_dependencies(checks):
        positions = tf.where(positions < 0, positions + length, positions)
    return tf.gather(sequence_output, tf.cast(positions, tf.int32), batch_dims=1)


def _matmul_transposed(x, matrix):
    """`x @ matrix^T` for x `(B, P, D)` and matrix `(V, D)`, as `(B, P, V)`.

    On TensorFlow one 2-D `MatMul` with `transpose_b`, whose gradient for
    `matrix` comes out as `(V, D)`: `ops.matmul(x, ops.transpose(matrix))`
    would also transpose that `(V, D)` gradient, a full pass over the
    vocabulary matrix every step.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.matmul(x, ops.transpose(matrix))
    import tensorflow as tf

    shape = tf.shape(x)
    logits = tf.matmul(tf.reshape(x, (-1, shape[-1])), matrix, transpose_b=True)
    return tf.reshape(logits, tf.concat([shape[:-1], tf.shape(matrix)[:1]], 0))


@keras.saving.register_keras_serializable(package="kbert")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the original token at each masked position.

    First gathers the `masked_lm_positions` from the sequence output (so the
    costly vocabulary projection runs only on the `P` predicted positions, as
    in original BERT), then Dense(hidden_size) + activation + LayerNorm
    (float32), then logits = x @ E^T + b with E the token-embedding matrix
    (tied weights) and b a `(vocab_size,)` output bias. The projection runs in
    the compute dtype: float32, or bfloat16/float16 under a mixed policy (as
    keras-hub's `MaskedLMHead`: the matmul units' native type, products
    accumulated in float32, each logit rounded once to the compute dtype).
    Logits are float32 in every dtype policy: the projection's result is cast
    to float32 before the float32 bias is added, and the layer has
    `autocast=False`.

    Args:
        token_embedding: the `keras.layers.Embedding` whose matrix
            `(vocab_size, hidden_size)` is the tied output projection.
        hidden_act: str, activation of the transform ("gelu": exact GELU).
        layer_norm_eps: float, LayerNorm epsilon (BERT: 1e-12).
        kernel_initializer: initializer of the transform kernel
            (default `TruncatedNormal(stddev=0.02)`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        sequence_output: float tensor `(batch_size, sequence_length, hidden_size)`.
        masked_lm_positions: int tensor `(batch_size, num_predictions)`,
            indices into `sequence_length` (padded slots may hold 0).

    Returns:
        float32 logits `(batch_size, num_predictions, vocab_size)`.

    Raises:
        ValueError: `token_embedding` is not a Keras `Embedding`, or its width
            differs from the sequence output's `hidden_size`.
    """

    def __init__(
        self,
        token_embedding,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        kernel_initializer=None,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if not isinstance(token_embedding, keras.layers.Embedding):
            raise ValueError(  # noqa: TRY004 (the documented error of a wrong argument)
                "`token_embedding` must be a keras.layers.Embedding; received "
                f"{type(token_embedding).__name__}."
            )
        self.token_embedding = token_embedding
        self.hidden_act = hidden_act
        self.activation = get_activation(hidden_act)
        self.layer_norm_eps = layer_norm_eps
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.TruncatedNormal(stddev=0.02)
        )

    def build(self, sequence_output_shape, masked_lm_positions_shape=None):
        hidden_size = sequence_output_shape[-1]
        if hidden_size != self.token_embedding.output_dim:
            raise ValueError(
                f"The sequence output width ({hidden_size}) must equal the "
                f"token embedding width ({self.token_embedding.output_dim})."
            )
        if not self.token_embedding.built:
            self.token_embedding.build((None, None))
        self.transform = keras.layers.Dense(
            hidden_size,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform.build((None, None, hidden_size))
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_eps, dtype="float32", name="layer_norm"
        )
        self.layer_norm.build((None, None, hidden_size))
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.token_embedding.input_dim,),
            initializer="zeros",
            dtype="float32",
        )
        self.built = True

    def call(self, sequence_output, masked_lm_positions):
        x = _gather_positions(sequence_output, masked_lm_positions)  # [B, P, D]
        x = self.activation(self.transform(x))
        x = ops.cast(self.layer_norm(x), self.compute_dtype)
        embeddings = ops.cast(self.token_embedding.embeddings, self.compute_dtype)  # [V, D]
        logits = _matmul_transposed(x, embeddings)  # [B, P, V]
        return ops.cast(logits, "float32") + ops.cast(self.output_bias, "float32")

    def compute_output_shape(self, sequence_output_shape, masked_lm_positions_shape):
        return tuple(masked_lm_positions_shape) + (self.token_embedding.input_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "token_embedding": keras.layers.serialize(self.token_embedding),
                "hidden_act": self.hidden_act,
                "layer_norm_eps": self.layer_norm_eps,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["token_embedding"] = keras.layers.deserialize(config["token_embedding"])
        return cls(**config)
