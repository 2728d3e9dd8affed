"""The functional BERT encoder (Devlin et al. 2019, section 3)."""

import keras

from kbert.layers.bert_embeddings import BertEmbeddings
from kbert.layers.transformer_encoder_block import TransformerEncoderBlock
from kbert.models.bert_config import BertConfig
from kbert.models.input_checks import INPUT_NAMES, BertInputsModel
from kbert.models.presets import preset_config


@keras.saving.register_keras_serializable(package="kbert")
class BertEncoder(BertInputsModel):
    """BERT as a functional Keras model: embeddings, L post-LN blocks, tanh pooler.

    Built in `__init__` from `BertConfig` fields, so `get_config` is exactly
    those fields and `.keras` files reload without `custom_objects`.

    Inputs (dict, all int32 `(batch_size, sequence_length)`):
        token_ids: WordPiece ids in `[0, vocab_size)` (alias `input_ids`).
        segment_ids: segment (token type) ids in `[0, type_vocab_size)`.
        padding_mask: 1 for real tokens, 0 for padding (bool/float also work).

    Outputs (dict):
        sequence_output: `(batch_size, sequence_length, hidden_size)`, the last
            block's hidden states, in the compute dtype.
        pooled_output: `(batch_size, hidden_size)`, tanh(Dense(sequence_output[:, 0])),
            BERT's pooler over `[CLS]`.

    Inputs are checked alike by `__call__`, `fit`, `evaluate`, `predict` and
    the `*_on_batch` methods (`BertInputsModel`, `check_input_dict`).

    Sublayers: `embeddings` (`BertEmbeddings`), `transformer_layers` (list of
    `TransformerEncoderBlock`), `pooler` (`Dense`, tanh).

    Args:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
        intermediate_size, hidden_act, hidden_dropout_prob,
        attention_probs_dropout_prob, max_position_embeddings,
        type_vocab_size, initializer_range, layer_norm_eps: as in `BertConfig`.
        dtype: a dtype policy name, e.g. "float32" or "mixed_bfloat16";
            defaults to the global policy.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: invalid hyperparameters (validated by `BertConfig`).
            When called: missing or unknown keys, inputs not of rank 2 or of
            different shapes, a sequence longer than `max_position_embeddings`.
        TypeError (when called): ids of a non-integer dtype.
        InvalidIdsError (when called, a ValueError and a
            tf.errors.InvalidArgumentError): ids outside their table.

    Example:
    >>> encoder = BertEncoder.from_preset("bert_tiny", vocab_size=100)
    >>> ids = keras.ops.ones((1, 8), "int32")
    >>> out = encoder({"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": ids})
    >>> out["pooled_output"].shape
    (1, 128)
    """

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        dtype=None,
        **kwargs,
    ):
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            hidden_act=hidden_act,
            hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=type_vocab_size,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
        )
        initializer = keras.initializers.TruncatedNormal(stddev=initializer_range)
        # === Layers ===
        embeddings = BertEmbeddings(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=type_vocab_size,
            hidden_dropout_prob=hidden_dropout_prob,
            layer_norm_eps=layer_norm_eps,
            initializer_range=initializer_range,
            dtype=dtype,
            name="embeddings",
        )
        transformer_layers = [
            TransformerEncoderBlock(
                num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size,
                hidden_act=hidden_act,
                hidden_dropout_prob=hidden_dropout_prob,
                attention_probs_dropout_prob=attention_probs_dropout_prob,
                layer_norm_eps=layer_norm_eps,
                kernel_initializer=initializer,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_hidden_layers)
        ]
        pooler = keras.layers.Dense(
            hidden_size,
            activation="tanh",
            kernel_initializer=initializer,
            dtype=dtype,
            name="pooler",
        )
        # === Functional graph ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in INPUT_NAMES
        }
        x = embeddings(inputs["token_ids"], inputs["segment_ids"])
        for block in transformer_layers:
            x = block(x, padding_mask=inputs["padding_mask"])
        pooled_output = pooler(x[:, 0, :])
        super().__init__(
            inputs=inputs,
            outputs={"sequence_output": x, "pooled_output": pooled_output},
            dtype=dtype,
            **kwargs,
        )
        # A functional Model does not keep its `dtype` argument: report the
        # policy its layers were built with.
        self.dtype_policy = embeddings.dtype_policy
        # === Config ===
        self.bert_config = config
        self.embeddings = embeddings
        self.transformer_layers = transformer_layers
        self.pooler = pooler

    def _input_config(self):
        return self.bert_config

    def pooled_output(self, inputs, training=None):
        """BERT's `pooled_output` alone, computing only `[CLS]` in the last block.

        The last block's queries, residuals and feed-forward run for position
        0 only (its keys and values still see every token), which is all the
        pooler reads: the same numbers as `self(inputs)["pooled_output"]` for
        about 1/L less work. Used by `BertClassifier`; works on symbolic
        (functional) and eager inputs.

        Args:
            inputs: dict of `token_ids`, `segment_ids`, `padding_mask`, int32
                `(batch_size, sequence_length)`.
            training: bool, enables dropout.

        Returns:
            `(batch_size, hidden_size)` in the compute dtype.
        """
        x = self.embeddings(inputs["token_ids"], inputs["segment_ids"], training=training)
        for block in self.transformer_layers[:-1]:
            x = block(x, padding_mask=inputs["padding_mask"], training=training)
        x = self.transformer_layers[-1](
            x, padding_mask=inputs["padding_mask"], training=training, output_length=1
        )
        return self.pooler(x[:, 0, :])

    @property
    def token_embedding(self):
        """The `keras.layers.Embedding` holding the `(vocab_size, hidden_size)` matrix."""
        return self.embeddings.token_embedding

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(self.bert_config.to_dict())
        # The policy the layers were built with (a functional Model does not
        # keep its `dtype` argument).
        config["dtype"] = keras.dtype_policies.serialize(self.embeddings.dtype_policy)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_bert_config(cls, config, **kwargs):
        """Builds an encoder from a `BertConfig` (or a path to its JSON file).

        Args:
            config: `BertConfig`, or str path of `bert_config.json`/`config.json`.
            **kwargs: `dtype`, `name`.
        """
        if isinstance(config, str):
            config = BertConfig.from_json_file(config)
        return cls(**config.to_dict(), **kwargs)

    @classmethod
    def from_preset(cls, name, dtype=None, **overrides):
        """Builds a randomly initialised encoder of preset `name` (see `PRESETS`).

        Raises:
            ValueError: unknown preset name.
        """
        return cls(**preset_config(name, **overrides).to_dict(), dtype=dtype)
