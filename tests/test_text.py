"""Tokenizer ids against Google's uncased vocabulary, packer layout, vocabulary checks."""

import numpy as np
import pytest
import tensorflow as tf

from kbert.text import (
    BertPacker,
    BertTokenizer,
    build_vocabulary,
    load_vocabulary,
    write_vocabulary,
)


@pytest.mark.parametrize(
    "text,ids",
    [
        ("naïve café", [15743, 7668]),
        ("Héllo, WORLD!", [7592, 1010, 2088, 999]),
        ("I love 北京 !", [1045, 2293, 1781, 1755, 999]),
        ("a" * 101, [100]),
        ("a" * 100, None),  # 100 characters still go through WordPiece
        ("", []),
    ],
)
def test_uncased_ids(uncased_tokenizer, text, ids):
    out = uncased_tokenizer(tf.constant([text]))
    assert isinstance(out, tf.RaggedTensor) and out.dtype == tf.int32
    if ids is None:
        assert 100 not in out.to_list()[0]
    else:
        assert out.to_list() == [ids]


def test_batch_and_scalar(uncased_tokenizer):
    assert uncased_tokenizer(tf.constant("hello")).to_list() == [[7592]]
    assert uncased_tokenizer(tf.constant(["hello", "", "world"])).to_list() == [[7592], [], [2088]]


def test_pack_empty_and_pairs(uncased_tokenizer):
    packer = BertPacker(8, cls_id=101, sep_id=102, pad_id=0)
    out = packer(uncased_tokenizer(tf.constant([""])))
    assert out["token_ids"].numpy().tolist() == [[101, 102, 0, 0, 0, 0, 0, 0]]
    assert out["padding_mask"].numpy().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    a = tf.ragged.constant([[1, 2, 3, 4, 5, 6], [7]], tf.int32)
    b = tf.ragged.constant([[11, 12, 13], [14, 15]], tf.int32)
    out = {k: v.numpy().tolist() for k, v in packer([a, b]).items()}
    # Round-robin: 5 slots -> A keeps 3, B keeps 2 (first row); both fit in the second.
    assert out["token_ids"] == [[101, 1, 2, 3, 102, 11, 12, 102], [101, 7, 102, 14, 15, 102, 0, 0]]
    assert out["segment_ids"] == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]]
    assert out["padding_mask"] == [[1] * 8, [1] * 6 + [0, 0]]


def test_packer_errors():
    with pytest.raises(ValueError, match="sequence_length"):
        BertPacker(1, 101, 102)
    packer = BertPacker(4, 101, 102)
    with pytest.raises(ValueError, match="one or two segments"):
        packer([tf.ragged.constant([[1]])] * 3)
    with pytest.raises(ValueError, match="RaggedTensor"):
        packer(tf.constant([[1, 2]]))


def test_tokenizer_errors(tmp_path, uncased_tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BertTokenizer(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no tokens"):
        BertTokenizer(str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[MASK\]'\]"):
        BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="duplicate"):
        BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "a"])
    with pytest.raises(TypeError, match="tf.string"):
        uncased_tokenizer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"shape \(batch_size,\)"):
        uncased_tokenizer(tf.constant([["a"]]))


def test_tokenizer_config_round_trip_and_cased():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "Hello", "##s"]
    cased = BertTokenizer(vocab, lowercase=False)
    assert cased(tf.constant(["Hello hellos"])).to_list() == [[6, 5, 7]]
    clone = BertTokenizer.from_config(cased.get_config())
    assert clone(tf.constant(["Hello hellos"])).to_list() == [[6, 5, 7]]
    # Unstated casing is inferred: this vocabulary holds upper-case pieces, so it is cased.
    assert BertTokenizer(vocab)(tf.constant(["Hello"])).to_list() == [[6]]
    assert BertTokenizer(vocab, lowercase=True)(tf.constant(["Hello"])).to_list() == [[5]]


def test_build_vocabulary_covers_corpus(tmp_path):
    lines = ["The cat sat on the mat.", "The dog sat on the log.", "Cats and dogs."] * 20
    vocab = build_vocabulary(lines, vocab_size=200, min_count=2)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path = tmp_path / "vocab.txt"
    write_vocabulary(vocab, str(path))
    assert load_vocabulary(str(path)) == vocab
    tokenizer = BertTokenizer(str(path))
    ids = tokenizer(tf.constant(lines[:3])).flat_values.numpy()
    assert 1 not in ids  # no [UNK]: every word of the corpus is reachable
    assert "the" in vocab and "sat" in vocab
    with pytest.raises(ValueError, match="empty corpus"):
        build_vocabulary(["", "  "])


def test_uncased_vocab_special_ids(uncased_tokenizer):
    assert uncased_tokenizer.special_token_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert uncased_tokenizer.vocab_size == 30522
    assert uncased_tokenizer.id_to_token(1996) == "the"
    assert np.isclose(len(uncased_tokenizer.vocabulary), 30522)


def test_python_strings_are_one_batch(uncased_tokenizer):
    assert uncased_tokenizer(["hello world", "naïve café"]).to_list() == [[7592, 2088], [15743, 7668]]
    assert uncased_tokenizer("hello").to_list() == [[7592]]
