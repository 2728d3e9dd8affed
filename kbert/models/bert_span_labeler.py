"""Extractive question answering: start and end logits per token
(Devlin et al. 2019, section 4.2 and figure 4 (c); google-research/bert `run_squad.py`)."""

import keras

from kbert.models.task_heads import BertTaskModel

# Added to the logits of padding positions: they can never be chosen, and
# softmax over a padded row equals softmax over the unpadded row.
PADDING_LOGIT = -1e9


@keras.saving.register_keras_serializable(package="kbert")
class BertSpanLabeler(BertTaskModel):
    """`BertEncoder` -> `sequence_output` -> dense(2) -> start and end logits.

    BERT's SQuAD head: a start vector S and end vector E (one dense layer with
    2 outputs); the score of span (i, j) is `S·T_i + E·T_j`. Logits are
    float32, and padding positions are set to `PADDING_LOGIT` so a row's
    softmax (and the loss) does not depend on how far it is padded. Position
    0 (`[CLS]`) is the no-answer position of SQuAD 2.0.

    Inputs (dict, int32 `(batch_size, sequence_length)`): `token_ids`,
    `segment_ids`, `padding_mask`.

    Outputs (dict of float32 `(batch_size, sequence_length)`): `start_logits`,
    `end_logits`.

    Args:
        encoder: a `kbert.models.BertEncoder`.
        **kwargs: `keras.Model` arguments.

    Raises:
        ValueError: `encoder` is not a `BertEncoder`.
    """

    def __init__(self, encoder, **kwargs):
        self._check_encoder(encoder)
        config = encoder.bert_config
        # === Layers ===
        output_dense = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=config.initializer_range),
            dtype="float32",
            name="span_logits",
        )
        # === Functional graph ===
        inputs = self._encoder_inputs()
        sequence_output = encoder(inputs)["sequence_output"]
        logits = output_dense(sequence_output)  # (B, T, 2)
        is_padding = keras.ops.equal(keras.ops.cast(inputs["padding_mask"], "int32"), 0)
        start_logits, end_logits = (
            keras.ops.where(is_padding, PADDING_LOGIT, logits[:, :, i]) for i in (0, 1)
        )
        super().__init__(
            inputs=inputs,
            outputs={"start_logits": start_logits, "end_logits": end_logits},
            **kwargs,
        )
        self.dtype_policy = encoder.dtype_policy  # the encoder's, not the global one
        # === Config ===
        self.encoder = encoder
        self.output_dense = output_dense

    def _head_config(self):
        return {}
