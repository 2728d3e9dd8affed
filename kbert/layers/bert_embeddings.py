"""BERT's input embedding: token + segment + position, LayerNorm, dropout
(Devlin et al. 2019, section 3, Figure 2; google-research/bert
`modeling.embedding_lookup` and `embedding_postprocessor`)."""

import keras
from keras import ops

from kbert.layers import training_ops
from kbert.layers.fast_dropout import FastDropout
from kbert.layers.position_embedding import PositionEmbedding


@keras.saving.register_keras_serializable(package="kbert")
class BertEmbeddings(keras.layers.Layer):
    """Sums token, segment and learned position embeddings, then LayerNorm and dropout.

    Sublayers (their variables are the checkpoint names): `token_embedding`
    (`keras.layers.Embedding`, `(vocab_size, hidden_size)`; the masked-LM head
    ties its output projection to it), `segment_embedding`
    (`(type_vocab_size, hidden_size)`), `position_embedding`
    (`PositionEmbedding`, `(max_position_embeddings, hidden_size)`) and
    `layer_norm` (float32, epsilon `layer_norm_eps`).

    Args:
        vocab_size: int, WordPiece vocabulary size.
        hidden_size: int, embedding width.
        max_position_embeddings: int, longest supported sequence.
        type_vocab_size: int, number of segment ids (BERT: 2).
        hidden_dropout_prob: float in [0, 1), dropout after the LayerNorm.
        layer_norm_eps: float, LayerNorm epsilon (BERT: 1e-12).
        initializer_range: float, stddev of the truncated-normal initializer.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        token_ids: int tensor `(batch_size, sequence_length)`, ids in
            `[0, vocab_size)`.
        segment_ids: int tensor `(batch_size, sequence_length)`, ids in
            `[0, type_vocab_size)`.
        training: bool, enables dropout.

    Returns:
        Tensor `(batch_size, sequence_length, hidden_size)` in the compute dtype.

    Raises:
        ValueError: a non-positive size, a static sequence length above
            `max_position_embeddings` (see `PositionEmbedding`), or
            `token_ids` and `segment_ids` of different static shapes
            (`InvalidArgumentError` when known only at run time).
        TypeError: ids of a floating dtype.
        tf.errors.InvalidArgumentError: an id outside `[0, vocab_size)` or
            `[0, type_vocab_size)` (TensorFlow backend, not under XLA).
    """

    def __init__(
        self,
        vocab_size,
        hidden_size,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        layer_norm_eps=1e-12,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("type_vocab_size", type_vocab_size),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive int; received {value!r}.")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range

        def initializer():
            return keras.initializers.TruncatedNormal(stddev=initializer_range)

        self.token_embedding = keras.layers.Embedding(
            vocab_size,
            hidden_size,
            embeddings_initializer=initializer(),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            type_vocab_size,
            hidden_size,
            embeddings_initializer=initializer(),
            dtype=self.dtype_policy,
            name="segment_embedding",
        )
        self.position_embedding = PositionEmbedding(
            max_position_embeddings,
            initializer=initializer(),
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype="float32", name="layer_norm"
        )
        self.dropout = FastDropout(hidden_dropout_prob, dtype=self.dtype_policy)

    def build(self, token_ids_shape, segment_ids_shape=None):
        self.token_embedding.build(token_ids_shape)
        self.segment_embedding.build(token_ids_shape)
        embedded_shape = tuple(token_ids_shape) + (self.hidden_size,)
        self.position_embedding.build(embedded_shape)
        self.layer_norm.build(embedded_shape)
        self.built = True

    def _check_ids(self, ids, limit, name):
        if not ("int" in str(ids.dtype) or "bool" in str(ids.dtype)):
            raise TypeError(f"`{name}` must hold integer ids; received dtype {ids.dtype}.")
        dtype = keras.backend.standardize_dtype(ids.dtype)
        if dtype in ("bool", "int8", "int16", "uint8", "uint16"):
            # Widened so the range check's limit fits the dtype (a uint8 limit of
            # 300 would wrap) and every lookup takes them; bool ids are 0 and 1.
            ids = ops.cast(ids, "int32")
        elif dtype == "uint32":
            ids = ops.cast(ids, "int64")
        if keras.backend.backend() != "tensorflow":
            return ids
        import tensorflow as tf

        # Out-of-range ids would wrap (negative) or read zeros (GPU gather)
        # instead of failing; check them in the graph (a no-op under XLA).
        ids = tf.convert_to_tensor(ids)
        checks = [
            tf.debugging.assert_non_negative(ids, message=f"`{name}` holds a negative id"),
            tf.debugging.assert_less(
                ids,
                tf.cast(limit, ids.dtype),
                message=f"`{name}` holds an id >= {limit}, the size of its embedding table",
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(ids)

    def _check_same_shape(self, token_ids, segment_ids):
        # Without this, segment ids of shape (B, 1) or (S,) would broadcast silently.
        static = tuple(token_ids.shape), tuple(segment_ids.shape)
        if len(static[0]) != len(static[1]) or any(
            a is not None and b is not None and a != b for a, b in zip(*static)
        ):
            raise ValueError(
                "`token_ids` and `segment_ids` must have the same shape (batch_size, "
                f"sequence_length); received {static[0]} and {static[1]}."
            )
        if keras.backend.backend() != "tensorflow" or None not in static[0] + static[1]:
            return segment_ids
        import tensorflow as tf

        check = tf.debugging.assert_equal(
            tf.shape(token_ids), tf.shape(segment_ids),
            message="`token_ids` and `segment_ids` must have the same shape (batch_size, sequence_length)",
        )
        with tf.control_dependencies([check]):
            return tf.identity(segment_ids)

    def call(self, token_ids, segment_ids, training=None):
        token_ids = self._check_ids(token_ids, self.vocab_size, "token_ids")
        segment_ids = self._check_ids(segment_ids, self.type_vocab_size, "segment_ids")
        segment_ids = self._check_same_shape(token_ids, segment_ids)
        tokens = self.token_embedding(token_ids)
        x = tokens + self._segment_vectors(segment_ids, training)
        x = x + self.position_embedding(tokens)
        if training:  # the same float32 LayerNorm; one XLA kernel under mixed precision
            x = training_ops.layer_norm(self.layer_norm, x)
        else:
            x = ops.cast(self.layer_norm(x), self.compute_dtype)
        return self.dropout(x, training=training)

    def _segment_vectors(self, segment_ids, training):
        # In training, a one-hot MatMul (google-research/bert's
        # `embedding_postprocessor` does the same for this small table): its
        # gradient is a (type_vocab_size, tokens) x (tokens, hidden) MatMul, where
        # a lookup's is a segment sum over every token (1.3 vs 0.4 ms forward
        # plus backward for 4096 tokens, width 512, Zen 4). Same values.
        table = self.segment_embedding
        if (
            not training
            or keras.backend.backend() != "tensorflow"
            or self.type_vocab_size > 16
            or getattr(table, "lora_enabled", False)
            or getattr(table, "quantization_mode", None)
        ):
            return table(segment_ids)
        import tensorflow as tf

        ids = tf.convert_to_tensor(segment_ids)
        one_hot = tf.one_hot(tf.reshape(ids, [-1]), self.type_vocab_size, dtype=self.compute_dtype)
        vectors = tf.matmul(one_hot, tf.cast(table.embeddings, self.compute_dtype))
        return tf.reshape(vectors, tf.concat([tf.shape(ids), [self.hidden_size]], 0))

    def compute_output_shape(self, token_ids_shape, segment_ids_shape=None):
        return tuple(token_ids_shape) + (self.hidden_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "hidden_dropout_prob": self.hidden_dropout_prob,
                "layer_norm_eps": self.layer_norm_eps,
                "initializer_range": self.initializer_range,
            }
        )
        return config
