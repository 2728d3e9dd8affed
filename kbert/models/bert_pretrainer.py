"""BERT with its pretraining heads: masked LM and next-sentence prediction
(Devlin et al. 2019, section 3.1; google-research/bert `run_pretraining.py`)."""

import keras

from kbert.layers.masked_lm_head import MaskedLMHead
from kbert.models.bert_encoder import BertEncoder
from kbert.models.input_checks import INPUT_NAMES, POSITIONS_NAME, BertInputsModel


@keras.saving.register_keras_serializable(package="kbert")
class BertPretrainer(BertInputsModel):
    """`BertEncoder` plus a tied `MaskedLMHead` and a 2-way NSP classifier.

    Inputs (dict of int32): the encoder's `token_ids`, `segment_ids`,
    `padding_mask`, each `(batch_size, sequence_length)`, and
    `masked_lm_positions` `(batch_size, num_predictions)`, positions in
    `[0, sequence_length)`. Inputs are checked alike by `__call__`, `fit`,
    `evaluate`, `predict` and the `*_on_batch` methods (see
    `BertInputsModel`): float ids raise TypeError, bad keys or shapes and
    sequences longer than `max_position_embeddings` ValueError, host ids
    or positions out of range `InvalidIdsError`.

    Outputs (dict of float32 logits):
        masked_lm_logits: `(batch_size, num_predictions, vocab_size)`.
        next_sentence_logits: `(batch_size, 2)`; class 0 = "B follows A"
            (IsNext), class 1 = random B (NotNext), as in original BERT.

    Args:
        encoder: a `BertEncoder`; its token embedding is shared with the MLM
            head's output projection.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: `encoder` is not a `BertEncoder`.
    """

    input_names = INPUT_NAMES + (POSITIONS_NAME,)

    def __init__(self, encoder, **kwargs):
        if not isinstance(encoder, BertEncoder):
            raise ValueError(  # noqa: TRY004 (the documented error of a wrong argument)
                f"`encoder` must be a kbert BertEncoder; received {type(encoder).__name__}."
            )
        config = encoder.bert_config
        initializer = keras.initializers.TruncatedNormal(stddev=config.initializer_range)
        # === Layers ===
        masked_lm_head = MaskedLMHead(
            encoder.token_embedding,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            kernel_initializer=initializer,
            dtype=encoder.dtype_policy,
            name="masked_lm_head",
        )
        next_sentence_head = keras.layers.Dense(
            2, kernel_initializer=initializer, dtype="float32", name="next_sentence_head"
        )
        # === Functional graph ===
        inputs = dict(encoder.input)
        inputs[POSITIONS_NAME] = keras.Input(shape=(None,), dtype="int32", name=POSITIONS_NAME)
        encoder_outputs = encoder({name: inputs[name] for name in encoder.input})
        outputs = {
            "masked_lm_logits": masked_lm_head(
                encoder_outputs["sequence_output"], inputs[POSITIONS_NAME]
            ),
            "next_sentence_logits": next_sentence_head(encoder_outputs["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.dtype_policy = encoder.dtype_policy  # the encoder's, not the global one
        # === Config ===
        self.encoder = encoder
        self.masked_lm_head = masked_lm_head
        self.next_sentence_head = next_sentence_head

    def _input_config(self):
        return self.encoder.bert_config

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
