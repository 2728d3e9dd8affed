"""The in-graph parts of a string-input TFLite file: device tokenizer and dense packer.

`device_tokenizer` builds the tensorflow-text `FastBertTokenizer` whose TFLite
kernels tokenize raw text on the device; `pack_dense` packs its ids into BERT
inputs with TFLite builtin ops only; `tokenizer_differences` finds the
characters on which the device tokenizer may differ from kbert's
`BertTokenizer`. `kbert.serving.tflite_text` (which re-exports these names)
exports, runs and verifies the files.
"""

import unicodedata

import tensorflow as tf
import tensorflow_text as tf_text

from kbert.text.bert_tokenizer import MAX_BYTES_PER_WORD


def device_tokenizer(tokenizer):
    """The TFLite-ready `tensorflow_text.FastBertTokenizer` for a kbert tokenizer.

    Same vocabulary, `[UNK]` and longest word (`MAX_BYTES_PER_WORD` bytes) as
    `tokenizer`, with the op's built-in normalisation: lower-case + NFD +
    accent stripping (with NFKC case folding) when `tokenizer.lowercase`,
    else none. Control characters become word breaks.

    Args:
        tokenizer: `kbert.text.BertTokenizer`.

    Returns:
        `tensorflow_text.FastBertTokenizer` giving int32 ids.
    """
    return tf_text.FastBertTokenizer(
        tokenizer.vocabulary,
        token_out_type=tf.int32,
        max_bytes_per_word=MAX_BYTES_PER_WORD,
        unknown_token="[UNK]",
        lower_case_nfd_strip_accents=tokenizer.lowercase,
    )


def pack_dense(segments, sequence_length, cls_id, sep_id, pad_id=0):
    """Packs one or two tokenized segments into BERT inputs with dense TF ops.

    The result equals `kbert.text.BertPacker` (round-robin trimming, then
    `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, padding) but uses only ops
    with TFLite builtins (gather, where, min/max, compare), no ragged ops.
    Round-robin trimming of two segments of lengths `a`, `b` into a budget
    `n` keeps `min(a, max(n - b, ceil(n / 2)))` pieces of A and the rest of
    the budget (at most `b`) of B, as `tensorflow_text.RoundRobinTrimmer`.

    Args:
        segments: list of one or two `tf.RaggedTensor`s of int32 ids,
            `(batch_size, None)`, with the same batch size.
        sequence_length: int L, the packed length (>= 3, >= 5 for pairs).
        cls_id, sep_id, pad_id: int ids of `[CLS]`, `[SEP]`, `[PAD]`.

    Returns:
        dict of int32 `(batch_size, L)` tensors `token_ids`, `segment_ids`,
        `padding_mask`; int32 `num_wordpieces` `(batch_size,)`, the pieces
        of all segments before trimming, and bool `truncated`
        `(batch_size,)`, True where they exceed the `L - len(segments) - 1`
        left by the special tokens (the text was cut).
    """
    lengths = [tf.cast(s.row_lengths(), tf.int32) for s in segments]
    budget = sequence_length - len(segments) - 1
    if len(segments) == 1:
        kept = [tf.minimum(lengths[0], budget)]
    else:
        first = tf.minimum(lengths[0], tf.maximum(budget - lengths[1], (budget + 1) // 2))
        kept = [first, tf.minimum(lengths[1], budget - first)]
    j = tf.range(sequence_length, dtype=tf.int32)[tf.newaxis, :]  # [1, L]
    token_ids = tf.where(j == 0, cls_id, pad_id)  # [B, L] once broadcast below
    segment_ids = tf.zeros_like(j)
    start = tf.ones_like(kept[0])[:, tf.newaxis]  # [B, 1], first piece after [CLS]
    for index, (segment, count) in enumerate(zip(segments, kept)):
        values = tf.concat([tf.cast(segment.flat_values, tf.int32), [pad_id]], 0)
        row_starts = tf.cast(segment.row_splits[:-1], tf.int32)[:, tf.newaxis]
        count = count[:, tf.newaxis]
        inside = (j >= start) & (j < start + count)
        # Positions outside the segment read the appended pad (never out of range).
        source = tf.where(inside, row_starts + j - start, tf.shape(values)[0] - 1)
        token_ids = tf.where(inside, tf.gather(values, source), token_ids)
        token_ids = tf.where(j == start + count, sep_id, token_ids)
        segment_ids = tf.where((j >= start) & (j <= start + count), index, segment_ids)
        start = start + count + 1
    padding_mask = tf.cast(j < start, tf.int32)
    num_wordpieces = tf.add_n(lengths)
    return {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": padding_mask,
        "num_wordpieces": num_wordpieces,
        "truncated": num_wordpieces > budget,
    }


def tokenizer_differences(tokenizer, texts):
    """The characters of each text on which the TFLite tokenizer may differ from `tokenizer`.

    A character counts when it alone tokenizes differently with `tokenizer`
    (kbert's `BertTokenizer`, BERT's exact normalisation) and with
    `device_tokenizer(tokenizer)` (the op in a string-input file: NFKC case
    folding when lower-casing; the characters of
    `docs/tflite_tokenizer_differences.md`), or when it is a control
    character other than tab, newline and return (kbert deletes it, joining
    the letters around it; the device op splits the word there).

    Args:
        tokenizer: `kbert.text.BertTokenizer`.
        texts: list of str or UTF-8 bytes (invalid bytes are skipped: both
            tokenizers give `[UNK]` for them).

    Returns:
        list (one per text) of sorted lists of str characters; empty where
        both tokenizers must agree.
    """
    strings = [t.decode("utf-8", "ignore") if isinstance(t, bytes) else str(t) for t in texts]
    characters = sorted(set("".join(strings)))
    differing = set()
    if characters:
        batch = tf.constant(characters)
        ours = tokenizer(batch).to_list()
        device = device_tokenizer(tokenizer).tokenize(batch).to_list()
        differing = {c for c, a, b in zip(characters, ours, device) if a != b}
        differing |= {c for c in characters
                      if unicodedata.category(c) == "Cc" and c not in "\t\n\r"}
    return [sorted(differing.intersection(s)) for s in strings]
