"""Raw text (one or two segments) -> BERT inputs, as one Keras layer."""

import keras
import tensorflow as tf

from kbert.text.bert_packer import BertPacker
from kbert.text.bert_tokenizer import as_bert_tokenizer


@keras.saving.register_keras_serializable(package="kbert")
class BertTextPreprocessor(keras.layers.Layer):
    """Tokenizes and packs text for BERT: `BertTokenizer` then `BertPacker`.

    One segment becomes `[CLS] A [SEP]`, two become `[CLS] A [SEP] B [SEP]`
    with segment ids 0 then 1; a pair that is too long is trimmed
    round-robin (`tensorflow_text.RoundRobinTrimmer`: the budget is shared
    out one piece per segment in turn), which keeps the same pieces as
    google-research/bert's `_truncate_seq_pair` rule (Devlin et al. 2019, section 4.1; the input
    layout of figure 4 (a)). Runs eagerly, inside `tf.data.Dataset.map` and
    inside exported graphs (SavedModel); not as a node of a functional
    model (Keras cannot infer a ragged op's output spec).

    Args:
        tokenizer: a `kbert.text.BertTokenizer`.
        sequence_length: int >= 3 (>= 5 for `(text, text_pair)`: room for
            one token of each segment), the packed length (or the longest row
            with `padding="longest"`).
        padding: "max_length" (pad every row to `sequence_length`) or
            "longest" (pad to the longest row of the batch).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a batch of text: tf.string `(batch_size,)` (a NumPy array or
            a list of str also works), or a tuple `(text, text_pair)` of two
            such batches of equal size for two-segment tasks.

    Returns:
        dict of int32 `(batch_size, length)` tensors `token_ids`,
        `segment_ids`, `padding_mask`, where `length` is `sequence_length` or
        the batch's longest packed row.

    Raises:
        ValueError: `tokenizer` is not a `BertTokenizer`, a bad
            `sequence_length`/`padding` (see `BertPacker`: below 3 at
            construction, below 5 when called on pairs), more than two
            segments, or segments of different batch sizes.
        TypeError: text that is not a string tensor.
    """

    def __init__(self, tokenizer, sequence_length=128, padding="max_length", **kwargs):
        kwargs.pop("dtype", None)
        kwargs.setdefault("trainable", False)
        super().__init__(dtype="int32", **kwargs)
        tokenizer = as_bert_tokenizer(tokenizer)
        special = tokenizer.special_token_ids
        self.tokenizer = tokenizer
        self.packer = BertPacker(
            sequence_length, special["cls"], special["sep"], special["pad"], padding=padding
        )
        self.sequence_length = self.packer.sequence_length
        self.padding = padding
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        # A tuple is (text, text_pair); anything else is one batch of text.
        segments = list(inputs) if isinstance(inputs, tuple) else [inputs]
        if not 1 <= len(segments) <= 2:
            raise ValueError(
                f"BertTextPreprocessor takes text or (text, text_pair); received {len(segments)} "
                "segments."
            )
        segments = [
            s if tf.is_tensor(s) or isinstance(s, keras.KerasTensor) else tf.constant(s, tf.string)
            for s in segments
        ]
        return super().__call__(tuple(segments), *args, **kwargs)

    def compute_output_spec(self, inputs):
        """Symbolic outputs for a functional model on `keras.Input(shape=(), dtype="string")`
        (one input, or a tuple of two): the packer's dict of int32 `KerasTensor`s."""
        return self.packer.compute_output_spec(
            [self.tokenizer.compute_output_spec(segment) for segment in inputs])

    def call(self, inputs):
        ids = [self.tokenizer(segment) for segment in inputs]
        if len(ids) == 2:
            sizes = [tf.shape(i.row_splits)[0] - 1 for i in ids]
            tf.debugging.assert_equal(
                sizes[0], sizes[1],
                message="`text` and `text_pair` must hold the same number of strings",
            )
        return self.packer(ids)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "sequence_length": self.sequence_length,
                "padding": self.padding,
            }
        )
        return config
