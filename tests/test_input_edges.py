"""Edge inputs a new user hits: zero-length and empty batches, a vocabulary of the wrong
size or encoding, packed lengths too short for any text, and ids a TFLite file cannot check."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kbert.models import BertConfig, BertEncoder, BertTextEmbedder
from kbert.serving import export_saved_model, export_tflite, run_tflite
from kbert.serving.tflite import SIGNATURE, check_tflite_inputs, id_table_sizes
from kbert.text import (
    SPECIAL_TOKENS,
    BertPacker,
    BertTextPreprocessor,
    BertTokenizer,
    load_vocabulary,
)

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
WORDS = ["the", "a", "hello", "world", "cat", "sat", "on", "mat", "##s", "."]
TOKENS = list(SPECIAL_TOKENS) + WORDS + [f"w{i}" for i in range(100 - 5 - len(WORDS))]


def _write(path, tokens):
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("vocab") / "vocab.txt", TOKENS)


@pytest.fixture(scope="module")
def tokenizer(vocab):
    return BertTokenizer(vocab, lowercase=True)


@pytest.fixture(scope="module")
def encoder():
    return BertEncoder.from_bert_config(TINY)


def _ids(batch, length):
    return {"token_ids": np.full((batch, length), 7, np.int32),
            "segment_ids": np.zeros((batch, length), np.int32),
            "padding_mask": np.ones((batch, length), np.int32)}


# --- 1. Zero-length ids and empty batches ------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(encoder, tokenizer, vocab, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "bert"
    return export_saved_model(encoder, tokenizer, vocab, str(base), sequence_length=8)


@pytest.mark.parametrize("signature", ["serving_token_ids", "serving_token_ids_int64"])
def test_saved_model_refuses_zero_length_ids_naming_the_input(saved_model, signature):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    function = tf.saved_model.load(saved_model).signatures[signature]
    dtype = tf.int64 if signature.endswith("int64") else tf.int32
    empty = {k: tf.constant(v, dtype) for k, v in _ids(1, 0).items()}
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"`token_ids` must be ids of shape \(batch_size, sequence_length\) "
                             r"with sequence_length >= 1; received shape"):
        function(**empty)
    ok = function(**{k: tf.constant(v, dtype) for k, v in _ids(1, 1).items()})
    assert ok["sequence_output"].shape == (1, 1, 32)


@pytest.mark.parametrize("entry", ["call", "predict", "evaluate", "fit"])
def test_host_checks_refuse_zero_length(encoder, entry):
    x = _ids(2, 0)
    run = {"call": lambda: encoder(x),
           "predict": lambda: encoder.predict(x, verbose=0),
           "evaluate": lambda: encoder.evaluate(x, verbose=0),
           "fit": lambda: encoder.fit(x, epochs=1, verbose=0)}[entry]
    with pytest.raises(ValueError, match=r"sequence_length >= 1 \(\[CLS\] at least\); received "
                                         r"shape \(2, 0\)"):
        run()


def test_empty_batch_is_refused_by_predict_evaluate_and_fit(encoder, tokenizer):
    embedder = BertTextEmbedder(encoder)
    features = BertTextPreprocessor(tokenizer, 8)([])
    assert features["token_ids"].shape == (0, 8)
    message = r"holds 0 examples \(`token_ids` of shape \(0, 8\)\)"
    with pytest.raises(ValueError, match="BertTextEmbedder " + message):
        embedder.predict(features, verbose=0)
    encoder.compile(optimizer="sgd", loss="mse")
    y = np.zeros((0,), np.float32)
    with pytest.raises(ValueError, match="BertEncoder " + message):
        encoder.evaluate(_ids(0, 8), y, verbose=0)
    with pytest.raises(ValueError, match="BertEncoder " + message):
        encoder.fit(_ids(0, 8), y, verbose=0)
    with pytest.raises(ValueError, match="BertEncoder " + message):
        encoder.fit(_ids(1, 8), np.zeros((1,)), validation_data=(_ids(0, 8), y), verbose=0)
    # A call on an empty batch still works (it is a batch, not a data set).
    assert embedder(features).shape == (0, 32)


# --- 2. A vocabulary file of another size at export ------------------------------------


def test_export_refuses_a_vocabulary_file_that_is_not_the_tokenizers(encoder, tokenizer, tmp_path):
    base = tmp_path / "bert"
    bigger = _write(tmp_path / "bigger.txt", TOKENS + ["extra"])
    with pytest.raises(ValueError, match=rf"{bigger} is not the vocabulary the tokenizer was built "
                                         r"from: the file has 101 tokens, the tokenizer 100\."):
        export_saved_model(encoder, tokenizer, bigger, str(base), sequence_length=8)
    swapped = _write(tmp_path / "swapped.txt", TOKENS[:5] + [TOKENS[6], TOKENS[5]] + TOKENS[7:])
    with pytest.raises(ValueError, match=r"the file has 100 tokens, the tokenizer 100 \(id 5 is "
                                         r"'a' in the file, 'the' in the tokenizer\)"):
        export_saved_model(encoder, tokenizer, swapped, str(base), sequence_length=8)
    assert not base.exists() or not os.listdir(base)


# --- 3. Vocabulary file errors ------------------------------------------------------------


def test_vocabulary_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "nonutf8.txt"
    bad.write_bytes(("\n".join(TOKENS[:2]) + "\nc\xffe\n").encode("latin-1"))
    for load in (load_vocabulary, BertTokenizer):
        with pytest.raises(ValueError, match=rf"{bad}:3: not UTF-8 \(byte 0xff at column 2\)"):
            load(str(bad))
        with pytest.raises(IsADirectoryError, match=rf"{tmp_path} is a folder"):
            load(str(tmp_path))
        with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope.txt'}"):
            load(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"{empty} holds no tokens"):
        load_vocabulary(empty)
    no_mask = _write(tmp_path / "no_mask.txt", [t for t in TOKENS if t != "[MASK]"])
    with pytest.raises(ValueError, match=rf"{no_mask} lacks the special tokens \['\[MASK\]'\]"):
        BertTokenizer(no_mask)


def test_vocabulary_lines_end_at_newline_only(tmp_path):
    # "\u2028" and "\x85" are line breaks for str.splitlines, not for vocab.txt readers
    # (tf.lookup.TextFileInitializer, HuggingFace): one token each here.
    tokens = TOKENS[:20] + ["a\u2028b", "c\x85d"]
    path = tmp_path / "vocab.txt"
    path.write_bytes(("\ufeff" + "\r\n".join(tokens) + "\r\n").encode("utf-8"))
    assert load_vocabulary(str(path)) == tokens


# --- 4. The shortest packed length --------------------------------------------------------


def test_sequence_length_leaves_room_for_a_token_per_segment(tokenizer, encoder, vocab, tmp_path):
    for build in (lambda: BertPacker(2, 2, 3), lambda: BertTextPreprocessor(tokenizer, 2)):
        with pytest.raises(ValueError, match=r"must be an int >= 3 \(\[CLS\], at least one token "
                                             r"and \[SEP\]\); received 2"):
            build()
    one = BertTextPreprocessor(tokenizer, 3)(["hello world"])
    assert one["token_ids"].numpy().tolist() == [[2, 7, 3]]
    with pytest.raises(ValueError, match=r"sequence_length=4 is too short for 2 segments: it must "
                                         r"be >= 5"):
        BertTextPreprocessor(tokenizer, 4)((["hello"], ["world"]))
    pair = BertTextPreprocessor(tokenizer, 5)((["hello world"], ["the cat"]))
    assert pair["token_ids"].numpy().tolist() == [[2, 7, 3, 5, 3]]
    for export in (lambda: export_saved_model(encoder, tokenizer, vocab, str(tmp_path / "b"), 2),
                   lambda: export_tflite(encoder, str(tmp_path / "x.tflite"), sequence_length=2)):
        with pytest.raises(ValueError, match=r"sequence_length=2 must be an int >= 3"):
            export()
    assert not os.listdir(tmp_path)


# --- 5 and 6. Ids a TFLite file cannot check ---------------------------------------------


@pytest.fixture(scope="module")
def tflite_file(encoder, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tflite") / "bert.tflite")
    export_tflite(encoder, path, sequence_length=8)
    return path


def test_tflite_table_sizes_are_read_from_the_file(tflite_file):
    details = tf.lite.Interpreter(model_path=tflite_file).get_signature_runner(
        SIGNATURE).get_input_details()
    sizes = id_table_sizes(tflite_file)
    assert sizes == {details["token_ids"]["index"]: 100, details["segment_ids"]["index"]: 2}


@pytest.mark.parametrize(("name", "value", "bound"), [
    ("token_ids", -1, r"in \[0, 100\)"),
    ("token_ids", 100, r"in \[0, 100\)"),
    ("segment_ids", 2, r"in \[0, 2\)"),
    ("segment_ids", -3, r"in \[0, 2\)"),
])
def test_run_tflite_refuses_ids_out_of_range(tflite_file, name, value, bound):
    features = _ids(1, 8)
    features[name][0, 5] = value
    message = (rf"takes `{name}` ids {bound} \(the rows of its embedding table\); received {value} "
               r"at index \(0, 5\)\. A TFLite file does not check ids itself\.")
    with pytest.raises(ValueError, match=message) as first:
        run_tflite(tflite_file, features)
    # A failed call leaves nothing behind for the next one: the same message, then a clean run.
    with pytest.raises(ValueError) as second:
        run_tflite(tflite_file, features)
    assert str(first.value) == str(second.value)
    assert run_tflite(tflite_file, _ids(1, 8))["sequence_output"].shape == (1, 8, 32)


def test_check_tflite_inputs_limits(tflite_file, monkeypatch):
    details = tf.lite.Interpreter(model_path=tflite_file).get_signature_runner(
        SIGNATURE).get_input_details()
    features = _ids(1, 8)
    features["token_ids"][0, 1] = 50
    with pytest.raises(ValueError, match=r"ids in \[0, 40\).*received 50 at index \(0, 1\)"):
        check_tflite_inputs(tflite_file, details, features, id_limits={"token_ids": 40})
    # Without the table sizes (a file whose ops cannot be read), negative ids are still refused.
    monkeypatch.setattr("kbert.serving.tflite.id_table_sizes", lambda path: {})
    features["token_ids"][0, 1] = 1000
    assert check_tflite_inputs(tflite_file, details, features)["token_ids"][0, 1] == 1000
    features["token_ids"][0, 1] = -1
    with pytest.raises(ValueError, match=r"takes `token_ids` ids >= 0; received -1 at index"):
        check_tflite_inputs(tflite_file, details, features)
