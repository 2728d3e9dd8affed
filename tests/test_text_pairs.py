"""Two-segment packing against HuggingFace's tokenizer and google-research's `_truncate_seq_pair`,
and `padding="longest"`.
"""

import numpy as np
import pytest
import tensorflow as tf

from kbert.text import BertPacker, BertTextPreprocessor
from tests.conftest import CLS, PAD, SEP  # noqa: F401

# ------------------------------------------------------------------ two-segment packing


def truncate_seq_pair(tokens_a, tokens_b, max_length):
    """google-research/bert `run_classifier._truncate_seq_pair`, written out again."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return tokens_a, tokens_b


def _pack(tokens_a, tokens_b, length):
    ids = [CLS] + tokens_a + [SEP] + tokens_b + [SEP]
    segments = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
    pad = length - len(ids)
    return ids + [PAD] * pad, segments + [0] * pad, [1] * len(ids) + [0] * pad


def test_truncate_seq_pair_rule_by_hand():
    # Hand-worked: 6 + 3 pieces into 5 -> pop A to 3 (3 + 3 = 6 > 5), tie pops B.
    assert truncate_seq_pair("abcdef", "xyz", 5) == (list("abc"), list("xy"))
    assert truncate_seq_pair("ab", "uvwxyz", 5) == (list("ab"), list("uvw"))
    assert truncate_seq_pair("abcde", "uvwxyz", 5) == (list("abc"), list("uv"))
    assert truncate_seq_pair("", "uvwxyz", 2) == ([], list("uv"))


def test_packer_trims_pairs_like_truncate_seq_pair_exhaustively():
    lengths = [(a, b) for a in range(8) for b in range(8)]
    seg_a = tf.ragged.constant([list(range(1000, 1000 + a)) for a, _ in lengths], tf.int32)
    seg_b = tf.ragged.constant([list(range(2000, 2000 + b)) for _, b in lengths], tf.int32)
    for sequence_length in range(5, 14):  # >= 5: one token of each segment fits
        out = BertPacker(sequence_length, CLS, SEP, PAD)([seg_a, seg_b])
        out = {k: v.numpy().tolist() for k, v in out.items()}
        for row, (a, b) in enumerate(lengths):
            kept = truncate_seq_pair(range(1000, 1000 + a), range(2000, 2000 + b), sequence_length - 3)
            ids, segments, mask = _pack(*kept, sequence_length)
            assert out["token_ids"][row] == ids, (sequence_length, a, b)
            assert out["segment_ids"][row] == segments
            assert out["padding_mask"][row] == mask


TRICKY_PAIRS = [
    ("Héllo, WORLD!", "naïve café"),
    ("I love 北京 !", "AT&T's ½ price (1895–1943)"),
    ("a", "the unaffable, unbelievably tiresome performances of everyone involved"),
    ("the unaffable, unbelievably tiresome performances of everyone involved", "a"),
    ("one two three four five", "six seven eight nine ten"),  # equal lengths
]


def _pairs(sst2_dev_rows):
    sentences = [sentence for sentence, _ in sst2_dev_rows]
    return TRICKY_PAIRS + list(zip(sentences[:-1], sentences[1:]))


def _hf_pieces(hf_tokenizer, texts):
    return hf_tokenizer(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("sequence_length", [12, 16, 31, 64])
def test_pairs_match_huggingface_and_truncate_seq_pair(uncased_tokenizer, hf_tokenizer, sst2_dev_rows,
                                                       sequence_length):
    pairs = _pairs(sst2_dev_rows)
    text, text_pair = [a for a, _ in pairs], [b for _, b in pairs]
    kbert = BertTextPreprocessor(uncased_tokenizer, sequence_length)((text, text_pair))
    kbert = {k: v.numpy() for k, v in kbert.items()}
    hf = hf_tokenizer(text, text_pair, truncation="longest_first", max_length=sequence_length,
                      padding="max_length", return_tensors="np")
    budget = sequence_length - 3
    compared = trimmed = diverged = 0
    for row, (a, b) in enumerate(zip(_hf_pieces(hf_tokenizer, text),
                                     _hf_pieces(hf_tokenizer, text_pair))):
        # google-research/bert's rule on HF's word pieces: kbert follows it on every row.
        ids, segments, mask = _pack(*truncate_seq_pair(a, b, budget), sequence_length)
        assert kbert["token_ids"][row].tolist() == ids, pairs[row]
        assert kbert["segment_ids"][row].tolist() == segments
        assert kbert["padding_mask"][row].tolist() == mask
        # HF's "longest_first" gives the odd leftover piece to the longer segment (B on a
        # tie), google-research's to A: they differ when both segments are cut to half an
        # odd budget and B is at least as long as A.
        if budget % 2 and min(len(a), len(b)) > budget // 2 and len(b) >= len(a):
            diverged += 1
            hf_kept = int(hf["attention_mask"][row].sum())
            assert hf["token_type_ids"][row][:hf_kept].tolist() == (
                [0] * (budget // 2 + 2) + [1] * (budget // 2 + 2))
            assert segments[:hf_kept] == [0] * (budget // 2 + 3) + [1] * (budget // 2 + 1)
            continue
        compared += 1
        trimmed += len(a) + len(b) > budget
        assert kbert["token_ids"][row].tolist() == hf["input_ids"][row].tolist(), pairs[row]
        assert kbert["segment_ids"][row].tolist() == hf["token_type_ids"][row].tolist()
        assert kbert["padding_mask"][row].tolist() == hf["attention_mask"][row].tolist()
    assert compared > 200
    if sequence_length < 64:
        assert trimmed > 50, trimmed  # the comparison covers real trimming
    if budget % 2:
        assert diverged > 10  # ... and the known difference occurs in these data


def test_padding_longest_is_max_length_cut_to_the_longest_row(uncased_tokenizer, hf_tokenizer,
                                                              sst2_dev_rows):
    sentences = [sentence for sentence, _ in sst2_dev_rows]
    cases = [
        (sentences[:40], 128),  # single segment; the longest row is far below 128
        ((sentences[:40], sentences[40:80]), 128),  # pairs, untrimmed
        ((sentences[:40], sentences[40:80]), 24),  # pairs trimmed: the width is 24
        (sentences[:1], 128),
    ]
    for inputs, sequence_length in cases:
        fixed = BertTextPreprocessor(uncased_tokenizer, sequence_length)(inputs)
        longest = BertTextPreprocessor(uncased_tokenizer, sequence_length, padding="longest")(inputs)
        segments = inputs if isinstance(inputs, tuple) else (inputs,)
        pieces = [sum(len(p) for p in row) + len(segments) + 1
                  for row in zip(*(_hf_pieces(hf_tokenizer, list(s)) for s in segments))]
        width = min(max(pieces), sequence_length)
        assert width < 128
        for name in ("token_ids", "segment_ids", "padding_mask"):
            assert longest[name].dtype == tf.int32
            assert longest[name].shape == (len(segments[0]), width), name
            np.testing.assert_array_equal(longest[name], fixed[name][:, :width])
        assert (fixed["padding_mask"].numpy()[:, width:] == 0).all()
        np.testing.assert_array_equal(np.sum(longest["padding_mask"], 1),
                                      np.minimum(pieces, sequence_length))


def test_preprocessor_config_and_errors(uncased_tokenizer):
    layer = BertTextPreprocessor(uncased_tokenizer, 16, padding="longest")
    clone = BertTextPreprocessor.from_config(layer.get_config())
    assert (clone.sequence_length, clone.padding) == (16, "longest")
    assert clone(["a b c"])["token_ids"].numpy().tolist() == [[CLS, 1037, 1038, 1039, SEP]]
    with pytest.raises(ValueError, match=r"`padding` must be one of .*received 'left'"):
        BertPacker(16, CLS, SEP, padding="left")
    with pytest.raises(ValueError, match="received 3 segments"):
        layer((["a"], ["b"], ["c"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of strings"):
        layer((["a", "b"], ["c"]))


