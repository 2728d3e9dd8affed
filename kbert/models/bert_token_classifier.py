"""Per-token classification (tagging) on BERT's sequence output
(Devlin et al. 2019, section 5.3 and figure 4 (d))."""

import keras

from kbert.models.task_heads import BertTaskModel


@keras.saving.register_keras_serializable(package="kbert")
class BertTokenClassifier(BertTaskModel):
    """`BertEncoder` -> `sequence_output` -> dropout -> dense logits per token.

    BERT's NER/POS head: each word piece's final hidden state goes through
    one dense layer. Words are labelled on their first word piece (section
    5.3); the other pieces carry an ignore label that the loss and metrics
    skip (see `kbert.data.tagging`). Logits are float32.

    Inputs (dict, int32 `(batch_size, sequence_length)`): `token_ids`,
    `segment_ids`, `padding_mask`.

    Output: float32 `(batch_size, sequence_length, num_classes)` logits.
    Padding positions get logits too; they do not depend on the padding and
    are ignored by the loss through the ignore label.

    Args:
        encoder: a `kbert.models.BertEncoder`.
        num_classes: int >= 2, number of tags.
        dropout: float in [0, 1) (default: the encoder's `hidden_dropout_prob`).
        **kwargs: `keras.Model` arguments.

    Raises:
        ValueError: not a `BertEncoder`, `num_classes` < 2, `dropout` outside [0, 1).
    """

    def __init__(self, encoder, num_classes, dropout=None, **kwargs):
        self._check_encoder(encoder)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2; received {num_classes!r}.")
        config = encoder.bert_config
        dropout = self._check_dropout(config.hidden_dropout_prob if dropout is None else dropout)
        # === Layers ===
        dropout_layer, output_dense = self._dropout_and_dense(encoder, num_classes, dropout, "logits")
        # === Functional graph ===
        inputs = self._encoder_inputs()
        sequence_output = encoder(inputs)["sequence_output"]
        logits = output_dense(dropout_layer(sequence_output))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.dtype_policy = encoder.dtype_policy  # the encoder's, not the global one
        # === Config ===
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = dropout
        self.output_dense = output_dense

    def _head_config(self):
        return {"num_classes": self.num_classes, "dropout": self.dropout}
