"""Sequence classification and regression on BERT's pooled `[CLS]` output
(Devlin et al. 2019, section 4.1 and figure 4 (a), (b))."""

import keras

from kbert.models.task_heads import BertTaskModel


@keras.saving.register_keras_serializable(package="kbert")
class BertClassifier(BertTaskModel):
    """`BertEncoder` -> `pooled_output` -> dropout -> dense logits.

    The head of google-research/bert `run_classifier.create_model`: the
    pooler's tanh(`W [CLS]`) output, dropout (0.1 in BERT), one dense layer.
    Logits are float32 under every dtype policy. The encoder's last block
    computes the `[CLS]` row only (`BertEncoder.pooled_output`, tf-models'
    `output_range`): the same logits for less work.

    Inputs (dict, int32 `(batch_size, sequence_length)`): `token_ids`,
    `segment_ids`, `padding_mask`, as for `BertEncoder`.

    Output: float32 `(batch_size, num_classes)`, unnormalised logits (softmax
    them for probabilities); with `num_classes=1`, the regression score
    `(batch_size, 1)` (e.g. STS-B similarity, trained with mean squared error).

    Args:
        encoder: a `kbert.models.BertEncoder` (e.g. from `kbert.checkpoints.load`).
        num_classes: int, 1 for regression or >= 2 classes.
        dropout: float in [0, 1), dropout on the pooled output (default: the
            encoder's `hidden_dropout_prob`).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: `encoder` is not a `BertEncoder`, `num_classes` < 1 or not
            an int, or `dropout` outside [0, 1).

    Example:
    >>> encoder = BertEncoder.from_preset("bert_tiny", vocab_size=100)  # doctest: +SKIP
    >>> model = BertClassifier(encoder, num_classes=2)  # doctest: +SKIP
    >>> model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # doctest: +SKIP
    """

    def __init__(self, encoder, num_classes, dropout=None, **kwargs):
        self._check_encoder(encoder)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"`num_classes` must be an int >= 1 (1 = regression); received {num_classes!r}."
            )
        config = encoder.bert_config
        dropout = self._check_dropout(config.hidden_dropout_prob if dropout is None else dropout)
        # === Layers ===
        dropout_layer, output_dense = self._dropout_and_dense(encoder, num_classes, dropout, "logits")
        # === Functional graph ===
        inputs = self._encoder_inputs()
        # The encoder's layers, with only [CLS] computed in the last block.
        pooled = encoder.pooled_output(inputs)
        logits = output_dense(dropout_layer(pooled))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.dtype_policy = encoder.dtype_policy  # the encoder's, not the global one
        # === Config ===
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = dropout
        self.output_dense = output_dense

    def _head_config(self):
        return {"num_classes": self.num_classes, "dropout": self.dropout}
