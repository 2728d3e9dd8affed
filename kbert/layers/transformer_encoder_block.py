"""BERT's Transformer encoder block (Vaswani et al. 2017, section 3.1; Devlin et
al. 2019, section 3), matching google-research/bert `modeling.transformer_model`."""

import keras
from keras import ops

from kbert.layers import training_ops
from kbert.layers.activations import get_activation, training_activation
from kbert.layers.fast_dropout import FastDropout

# Added to attention scores of padded keys. Scores are float32 here (see
# `call`), so this is finite in every policy; exp(-1e9 - max) underflows to 0.
_MASK_BIAS = -1e9


def _matmul_transpose_b(a, b):
    """`a @ b^T` over the last two axes; on TensorFlow one BatchMatMul with `adj_y`, so
    the gradient needs no transpose of its own."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.matmul(a, b, transpose_b=True)
    return ops.matmul(a, ops.swapaxes(b, -1, -2))


def attention_bias_from_padding_mask(padding_mask):
    """Turns a padding mask into an additive float32 attention bias.

    Args:
        padding_mask: `(batch_size, sequence_length)` tensor, bool, int or
            float; nonzero/True marks a real token.

    Returns:
        float32 tensor `(batch_size, 1, 1, sequence_length)`: 0 for real keys,
        -1e9 for padded keys.
    """
    keep = ops.cast(ops.cast(padding_mask, "bool"), "float32")
    return ops.expand_dims(ops.expand_dims((1.0 - keep) * _MASK_BIAS, 1), 1)


@keras.saving.register_keras_serializable(package="kbert")
class TransformerEncoderBlock(keras.layers.Layer):
    """One Transformer encoder block, post-LayerNorm as in BERT.

    Post-LN (`norm_first=False`, BERT):
        x = LN(x + Dropout(Attention(x)))
        y = LN(x + Dropout(Dense_out(act(Dense_in(x)))))
    Pre-LN (`norm_first=True`):
        x = x + Dropout(Attention(LN(x)));  y = x + Dropout(FFN(LN(x)))

    Attention is multi-head scaled dot-product self-attention with separate
    `query`, `key`, `value` and `output` dense projections of shape
    `(hidden_size, hidden_size)` (BERT's checkpoint layout). Scores, the mask
    bias and the softmax are computed in float32 under every dtype policy;
    both LayerNorms run in float32 and use `layer_norm_eps`.

    Train-step speed (same values to within float32 rounding): in training,
    dropout is `FastDropout`, the activation `training_activation(hidden_act)`
    and the LayerNorms `training_ops.layer_norm` (each one XLA-compiled
    elementwise kernel forward and backward; matmuls stay with TensorFlow's
    oneDNN kernels); the block computes on
    `(batch_size * sequence_length, hidden_size)`, so each Dense is one 2-D
    MatMul that TensorFlow fuses with its bias add, and in float32 training
    `training_ops.dense` computes each Dense's input gradient as a plain
    MatMul on a transposed kernel copy.

    Args:
        num_attention_heads: int, number of heads; must divide `hidden_size`.
        intermediate_size: int, width of the feed-forward layer.
        hidden_act: str, feed-forward activation. "gelu" (exact erf GELU,
            default), "gelu_approximate" (tanh form), or a Keras name.
        hidden_dropout_prob: float in [0, 1), dropout on both residual branches.
        attention_probs_dropout_prob: float in [0, 1), dropout on the attention
            probabilities.
        layer_norm_eps: float, LayerNorm epsilon (BERT: 1e-12).
        norm_first: bool, pre-LN instead of BERT's post-LN.
        kernel_initializer: initializer for all kernels
            (default `TruncatedNormal(stddev=0.02)`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(batch_size, sequence_length, hidden_size)`.
        padding_mask: optional `(batch_size, sequence_length)` tensor of bool,
            int or float; True/nonzero marks real tokens. Padded positions are
            never attended to.
        training: bool, enables dropout.
        output_length: optional int >= 1: compute only the first
            `output_length` positions (queries, residuals, feed-forward); keys
            and values still cover the whole sequence, so those rows equal the
            full block's. A classifier that reads `[CLS]` passes 1 to its last
            block (tf-models' `output_range`).

    Returns:
        Tensor `(batch_size, sequence_length, hidden_size)` in the compute
        dtype, or `(batch_size, output_length, hidden_size)`.

    Raises:
        ValueError: bad hyperparameters (echoing the value), or an input whose
            last dimension is not divisible by `num_attention_heads`.

    Example:
    >>> block = TransformerEncoderBlock(num_attention_heads=2, intermediate_size=16)
    >>> block(keras.ops.ones((1, 4, 8)), padding_mask=[[1, 1, 1, 0]]).shape
    (1, 4, 8)
    """

    def __init__(
        self,
        num_attention_heads,
        intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-12,
        norm_first=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (
            ("num_attention_heads", num_attention_heads),
            ("intermediate_size", intermediate_size),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{arg}` must be a positive int; received {value!r}."
                )
        for arg, value in (
            ("hidden_dropout_prob", hidden_dropout_prob),
            ("attention_probs_dropout_prob", attention_probs_dropout_prob),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{arg}` must be in [0, 1); received {value!r}.")
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.activation = get_activation(hidden_act)
        self.training_activation = training_activation(hidden_act)
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.norm_first = norm_first
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.TruncatedNormal(stddev=0.02)
        )

    def _dense(self, units, name):
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, inputs_shape, padding_mask_shape=None):
        hidden_size = inputs_shape[-1]
        if hidden_size is None or hidden_size % self.num_attention_heads:
            raise ValueError(
                f"The hidden size of the inputs ({hidden_size}) must be "
                f"divisible by num_attention_heads={self.num_attention_heads}."
            )
        self.hidden_size = hidden_size
        self.head_size = hidden_size // self.num_attention_heads
        self.query = self._dense(hidden_size, "query")
        self.key = self._dense(hidden_size, "key")
        self.value = self._dense(hidden_size, "value")
        self.attention_output = self._dense(hidden_size, "attention_output")
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_eps, dtype="float32", name="attention_layer_norm"
        )
        self.intermediate = self._dense(self.intermediate_size, "intermediate")
        self.output_dense = self._dense(hidden_size, "output")
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_eps, dtype="float32", name="output_layer_norm"
        )
        self.attention_dropout = FastDropout(
            self.attention_probs_dropout_prob, dtype=self.dtype_policy
        )
        self.hidden_dropout = FastDropout(
            self.hidden_dropout_prob, dtype=self.dtype_policy
        )
        for layer in (self.query, self.key, self.value, self.attention_output):
            layer.build(inputs_shape)
        self.intermediate.build(inputs_shape)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_size,))
        self.attention_layer_norm.build(inputs_shape)
        self.output_layer_norm.build(inputs_shape)
        self.built = True

    def _norm(self, layer, x, training=None):
        if training:  # the same float32 LayerNorm; one XLA kernel under mixed precision
            return training_ops.layer_norm(layer, x)
        return ops.cast(layer(x), self.compute_dtype)

    def _split_heads(self, x, batch_size, length):
        # [B*L, D] -> [B, N, L, H]
        x = ops.reshape(
            x, (batch_size, length, self.num_attention_heads, self.head_size)
        )
        return ops.transpose(x, (0, 2, 1, 3))

    def _self_attention(self, x, shape, attention_bias, training, output_length):
        # x: [B*T, D]; shape: (B, T).
        batch_size, sequence_length = shape
        if output_length is None:
            queries, length = x, sequence_length
        else:
            queries = ops.reshape(
                ops.reshape(x, (batch_size, sequence_length, self.hidden_size))[
                    :, :output_length, :
                ],
                (-1, self.hidden_size),
            )  # [B*F, D]
            length = output_length
        scale = 1.0 / self.head_size**0.5
        if training:  # the scale applied to the query kernel and bias: a smaller tensor
            query = training_ops.dense(self.query, queries, scale=scale)
        else:
            query = ops.multiply(self.query(queries), ops.cast(scale, self.compute_dtype))
        dense = self._dense_call(training)
        query = self._split_heads(query, batch_size, length)  # [B, N, F, H]
        key = self._split_heads(dense(self.key, x), batch_size, sequence_length)  # [B, N, T, H]
        value = self._split_heads(dense(self.value, x), batch_size, sequence_length)  # [B, N, T, H]
        scores = _matmul_transpose_b(query, key)  # [B, N, F, T]
        scores = ops.cast(scores, "float32")
        if attention_bias is not None:
            scores = scores + attention_bias  # bias: [B, 1, 1, T]
        probs = ops.softmax(scores, axis=-1)  # float32 [B, N, F, T]
        probs = self.attention_dropout(
            ops.cast(probs, self.compute_dtype), training=training
        )
        context = ops.matmul(probs, value)  # [B, N, F, H]
        context = ops.reshape(
            ops.transpose(context, (0, 2, 1, 3)), (-1, self.hidden_size)
        )  # [B*F, D]
        return dense(self.attention_output, context)

    @staticmethod
    def _dense_call(training):
        # In training, the input gradient is a plain MatMul (training_ops.dense); same values.
        return training_ops.dense if training else (lambda layer, x: layer(x))

    def call(self, inputs, padding_mask=None, training=None, output_length=None):
        # Static sizes where known, so the output keeps its static shape.
        batch_size = inputs.shape[0] or ops.shape(inputs)[0]
        sequence_length = inputs.shape[1] or ops.shape(inputs)[1]
        attention_bias = (
            None
            if padding_mask is None
            else attention_bias_from_padding_mask(padding_mask)
        )
        # The block runs on [B*S, D]: every Dense is then one 2-D MatMul that
        # TensorFlow's graph optimizer fuses with its bias add.
        x = ops.reshape(inputs, (-1, self.hidden_size))
        residual = x
        if output_length is not None:
            residual = ops.reshape(inputs[:, :output_length, :], (-1, self.hidden_size))
        if self.norm_first:
            x = self._norm(self.attention_layer_norm, x, training)
        x = self._self_attention(
            x, (batch_size, sequence_length), attention_bias, training, output_length
        )
        x = residual + self.hidden_dropout(x, training=training)
        if not self.norm_first:
            x = self._norm(self.attention_layer_norm, x, training)

        residual = x
        if self.norm_first:
            x = self._norm(self.output_layer_norm, x, training)
        # In training, the activation keeps less for the backward pass (same values).
        activation = self.training_activation if training else self.activation
        dense = self._dense_call(training)
        x = dense(self.output_dense, activation(dense(self.intermediate, x)))
        x = residual + self.hidden_dropout(x, training=training)
        if not self.norm_first:
            x = self._norm(self.output_layer_norm, x, training)
        length = sequence_length if output_length is None else output_length
        return ops.reshape(x, (batch_size, length, self.hidden_size))  # [B, F, D]

    def compute_output_shape(self, inputs_shape, padding_mask_shape=None):
        return inputs_shape

    def compute_output_spec(self, inputs, padding_mask=None, training=None, output_length=None):
        shape = tuple(self.compute_output_shape(inputs.shape))
        if output_length is not None:
            shape = (shape[0], output_length, shape[2])
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size,
                "hidden_act": self.hidden_act,
                "hidden_dropout_prob": self.hidden_dropout_prob,
                "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
                "layer_norm_eps": self.layer_norm_eps,
                "norm_first": self.norm_first,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
