"""Pre-split words -> BERT inputs with a word index per piece, for tagging."""

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from kbert.text.bert_tokenizer import as_bert_tokenizer


@keras.saving.register_keras_serializable(package="kbert")
class BertWordPacker(keras.layers.Layer):
    """Tokenizes a batch of word lists into `[CLS] pieces [SEP]` and records each piece's word.

    The in-graph twin of `kbert.data.tagging.encode_tagged_sentences`
    (same ids, same truncation): every word is tokenized on its own (the
    flat word list in one `tokenizer` call, regrouped per sentence with
    the ragged row lengths), a word with no piece at all (only control or
    format characters) becomes `[UNK]`, the pieces are cut to
    `sequence_length - 2`, wrapped in `[CLS]`/`[SEP]`
    (`tensorflow_text.combine_segments`) and padded
    (`tensorflow_text.pad_model_inputs`). `word_ids` tells which word each
    piece belongs to, so a tagger's logits can be read on each word's
    first piece (Devlin et al. 2019, section 5.3; see
    `kbert.data.tagging.word_predictions`). Runs eagerly, inside
    `tf.data.Dataset.map` and inside exported graphs (SavedModel).

    Args:
        tokenizer: a `kbert.text.BertTokenizer`.
        sequence_length: int >= 3, length of every packed row.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tf.string `tf.RaggedTensor` of words `(batch_size, None)`
            (a list of lists of str also works).

    Returns:
        dict of int32 `(batch_size, sequence_length)` tensors `token_ids`,
        `segment_ids` (all 0), `padding_mask` (1 real, 0 padding) and
        `word_ids` (word index in its sentence; -1 for `[CLS]`, `[SEP]` and
        padding). Words whose first piece was cut have no piece.

    Raises:
        ValueError: `tokenizer` not a `BertTokenizer`, `sequence_length` < 3,
            or inputs that are not a ragged string tensor of rank 2.

    Example:
    >>> packer = BertWordPacker(tokenizer, 8)  # doctest: +SKIP
    >>> packer([["unaffable", "man"]])["word_ids"].numpy()  # doctest: +SKIP
    array([[-1,  0,  0,  0,  1, -1, -1, -1]], dtype=int32)
    """

    def __init__(self, tokenizer, sequence_length=128, **kwargs):
        kwargs.pop("dtype", None)
        kwargs.setdefault("trainable", False)
        super().__init__(dtype="int32", **kwargs)
        tokenizer = as_bert_tokenizer(tokenizer)
        if (isinstance(sequence_length, bool) or not isinstance(sequence_length, int)
                or sequence_length < 3):
            raise ValueError(
                f"`sequence_length` must be an int >= 3; received {sequence_length!r}."
            )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)):
            inputs = tf.ragged.constant(inputs, dtype=tf.string, ragged_rank=1)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        if (not isinstance(inputs, tf.RaggedTensor) or inputs.shape.rank != 2
                or inputs.ragged_rank != 1 or inputs.dtype != tf.string):
            raise ValueError(
                "BertWordPacker expects a tf.string RaggedTensor of words (batch_size, None); "
                f"received {type(inputs).__name__} {getattr(inputs, 'dtype', '')} of shape "
                f"{getattr(inputs, 'shape', None)}."
            )
        special = self.tokenizer.special_token_ids
        words = inputs.with_row_splits_dtype(tf.int64)
        pieces = self.tokenizer(words.flat_values).with_row_splits_dtype(tf.int64)  # (W, None)
        # A word without pieces becomes [UNK] so that it still gets a prediction.
        empty = tf.cast(tf.equal(pieces.row_lengths(), 0), tf.int64)
        unk = tf.fill([tf.reduce_sum(empty)], tf.constant(special["unk"], tf.int32))
        pieces = tf.concat([pieces, tf.RaggedTensor.from_row_lengths(unk, empty)], axis=1)
        word_index = tf.cast(tf.ragged.range(words.row_lengths()).flat_values, tf.int32)  # (W,)
        piece_words = tf.repeat(word_index, pieces.row_lengths())
        nested = [words.row_lengths(), pieces.row_lengths()]
        # (B, words, pieces) -> (B, pieces), cut to leave room for [CLS] and [SEP].
        budget = self.sequence_length - 2
        token_ids = tf.RaggedTensor.from_nested_row_lengths(
            tf.cast(pieces.flat_values, tf.int32), nested).merge_dims(1, 2)[:, :budget]
        word_ids = tf.RaggedTensor.from_nested_row_lengths(
            piece_words, nested).merge_dims(1, 2)[:, :budget]
        token_ids, segment_ids = tf_text.combine_segments(
            [token_ids], start_of_sequence_id=special["cls"], end_of_segment_id=special["sep"]
        )
        word_ids, _ = tf_text.combine_segments(
            [word_ids], start_of_sequence_id=-1, end_of_segment_id=-1
        )
        outputs = {}
        for name, ids, pad_value in (
            ("token_ids", token_ids, special["pad"]),
            ("segment_ids", segment_ids, 0),
            ("word_ids", word_ids, -1),
        ):
            padded, mask = tf_text.pad_model_inputs(
                ids, max_seq_length=self.sequence_length, pad_value=pad_value
            )
            outputs[name] = tf.cast(padded, tf.int32)
            outputs.setdefault("padding_mask", tf.cast(mask, tf.int32))
        return {name: outputs[name] for name in ("token_ids", "segment_ids", "padding_mask", "word_ids")}

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "sequence_length": self.sequence_length,
            }
        )
        return config
