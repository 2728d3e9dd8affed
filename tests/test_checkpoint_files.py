"""Checkpoint files on disk: casing through every format, all-or-nothing writers, movable folders.

The independent reference for casing is `transformers.BertTokenizerFast`, which reads the
`tokenizer_config.json` kbert writes; the reference for "nothing left behind" is the file
system itself.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kbert import checkpoints
from kbert.checkpoints import huggingface, tokenizer_files
from kbert.models import BertClassifier, BertConfig, BertEncoder
from tests.conftest import REPO
from tests.numpy_bert import randomize

transformers = pytest.importorskip("transformers")

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["Paris", "paris", "The", "the", "is", "in", "France", "france", "capital", ".", "##s", "a"]
SENTENCE = "The capital of France is Paris."


def _config(vocab_size):
    return BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)


@pytest.fixture(scope="module")
def cased(tmp_path_factory):
    """A folder with a cased vocabulary and no tokenizer_config.json, and an encoder for it."""
    folder = tmp_path_factory.mktemp("cased_vocab")
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    encoder = BertEncoder.from_bert_config(_config(len(SPECIAL) + len(WORDS)))
    randomize(encoder, seed=3)
    return folder, encoder


def _hf_ids(folder, text=SENTENCE):
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(folder))
    return tokenizer(text)["input_ids"]


def _kbert_ids(path, text=SENTENCE):
    import tensorflow as tf

    return checkpoints.load_tokenizer(str(path))(tf.constant([text])).to_list()[0]


def _program(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_casing_is_inferred_from_a_cased_vocabulary(cased):
    folder, _ = cased
    lowercase, source = tokenizer_files.read_do_lower_case(str(folder / "vocab.txt"))
    assert lowercase is False and source.startswith("inferred")
    paris = WORDS.index("Paris") + len(SPECIAL)
    # kbert's ids on a cased vocabulary keep "Paris" (and the upper-case "The").
    ids = _kbert_ids(folder)
    assert paris in ids and WORDS.index("The") + len(SPECIAL) in ids


def test_casing_round_trip_through_every_format(cased, tmp_path):
    """do_lower_case: false and the id of "Paris" survive HF -> Google -> HF -> .keras -> export."""
    folder, encoder = cased
    source = tmp_path / "hf_source"
    checkpoints.save(encoder, str(source), vocab_path=str(folder / "vocab.txt"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is False
    expected = _hf_ids(source)  # the reference: transformers on the folder kbert wrote
    assert expected[1:-1] == _kbert_ids(folder)
    assert WORDS.index("Paris") + len(SPECIAL) in expected

    google = tmp_path / "google" / "bert_model.ckpt"
    hf_again = tmp_path / "hf_again"
    keras_file = tmp_path / "keras" / "encoder.keras"
    for src, out, fmt in [(source, google, "google"), (google, hf_again, "huggingface"),
                          (hf_again, keras_file, "keras")]:
        result = _program("export.convert_checkpoint", f"--source={src}", f"--output={out}",
                          f"--format={fmt}")
        assert result.returncode == 0, result.stderr
        assert "do_lower_case=False" in result.stdout
        assert checkpoints.load_tokenizer(str(out)).lowercase is False
        assert _kbert_ids(out) == expected[1:-1]
    assert _hf_ids(hf_again) == expected
    # The .keras file loads like any checkpoint, with the same weights as the source.
    reloaded = checkpoints.load(str(keras_file))
    for a, b in zip(reloaded.get_weights(), encoder.get_weights()):
        np.testing.assert_array_equal(a, b)

    # An export of the last copy tokenizes cased, in the graph, in a fresh process.
    from kbert.serving import WORDPIECES_SIGNATURE, encoder_export, run_saved_model_in_fresh_process

    result = encoder_export.export_encoder(str(keras_file), str(tmp_path / "export"), 1, 16,
                                           texts=[SENTENCE])
    assert result["lowercase"] is False
    pieces = run_saved_model_in_fresh_process(result["saved_model"], [SENTENCE],
                                              WORDPIECES_SIGNATURE)
    assert pieces["token_ids"][0][: len(expected)].tolist() == expected
    assert "Paris" in pieces["wordpieces"][0].tolist()


def test_save_reads_the_casing_beside_the_vocabulary_and_the_legacy_key(cased, tmp_path):
    folder, encoder = cased
    vocab = tmp_path / "v" / "vocab.txt"
    vocab.parent.mkdir()
    shutil.copyfile(folder / "vocab.txt", vocab)
    # A stated casing wins over the vocabulary; kbert's old key is still read.
    (vocab.parent / "tokenizer_config.json").write_text('{"lowercase": true}')
    prefix = checkpoints.save(encoder, str(tmp_path / "g" / "bert_model.ckpt"), format="google",
                              vocab_path=str(vocab))
    assert checkpoints.load_tokenizer(prefix).lowercase is True
    assert json.loads((tmp_path / "g" / "tokenizer_config.json").read_text()) == {
        "do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    (vocab.parent / "tokenizer_config.json").write_text('{"do_lower_case": "no"}')
    with pytest.raises(ValueError, match="do_lower_case must be true or false; found 'no'"):
        checkpoints.save(encoder, str(tmp_path / "h"), vocab_path=str(vocab))
    assert not (tmp_path / "h").exists()


def test_fine_tuning_start_infers_the_casing_of_a_vocab_file(cased):
    from kbert.training import runs

    folder, _ = cased
    _, tokenizer, vocab_path = runs.load_starting_point(
        vocab_file=str(folder / "vocab.txt"), preset="bert_tiny")
    assert tokenizer.lowercase is False and vocab_path == str(folder / "vocab.txt")


def _leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith("."))


@pytest.mark.parametrize("fmt", ["huggingface", "google"])
def test_failed_save_leaves_nothing(cased, tmp_path, fmt, uncased_vocab):
    folder, encoder = cased
    target = tmp_path / "out" / ("bert_model.ckpt" if fmt == "google" else "hf")
    written = target.parent if fmt == "google" else target
    # A vocabulary of another size (30,522 tokens for a 17-token encoder).
    with pytest.raises(ValueError, match=r"has 30522 tokens but the model's vocab_size is 17"):
        checkpoints.save(encoder, str(target), fmt, vocab_path=uncased_vocab)
    assert not written.exists()
    with pytest.raises(FileNotFoundError, match="vocab_path=.*missing.txt does not exist"):
        checkpoints.save(encoder, str(target), fmt, vocab_path=str(tmp_path / "missing.txt"))
    assert not written.exists()
    with pytest.raises(ValueError, match="Unknown format 'onnx'"):
        checkpoints.save(encoder, str(target), "onnx")
    assert not written.exists() and _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing(cased, tmp_path, monkeypatch):
    folder, encoder = cased

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken)  # config.json is written after the weights
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(encoder, str(tmp_path / "hf"), vocab_path=str(folder / "vocab.txt"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(encoder, str(tmp_path / "g" / "bert_model.ckpt"), "google")
    assert os.listdir(tmp_path) == []


def test_save_never_replaces_existing_files(cased, tmp_path):
    folder, encoder = cased
    target = tmp_path / "hf"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="config.json exists"):
        checkpoints.save(encoder, str(target))
    assert sorted(os.listdir(target)) == ["config.json", "notes.txt"]
    # A folder holding other files takes a checkpoint beside them.
    (target / "config.json").unlink()
    checkpoints.save(encoder, str(target), vocab_path=str(folder / "vocab.txt"))
    assert sorted(os.listdir(target)) == sorted(
        ["config.json", "model.safetensors", "notes.txt", "tokenizer_config.json", "vocab.txt"])
    assert _leftovers(tmp_path) == []


def test_written_files_get_ordinary_modes(cased, tmp_path):
    folder, encoder = cased
    old = os.umask(0o022)
    try:
        checkpoints.save(encoder, str(tmp_path / "hf"), vocab_path=str(folder / "vocab.txt"))
        checkpoints.save(encoder, str(tmp_path / "g" / "bert_model.ckpt"), "google")
    finally:
        os.umask(old)
    for sub in ("hf", "g"):
        assert oct(os.stat(tmp_path / sub).st_mode & 0o777) == "0o755"
        for name in os.listdir(tmp_path / sub):
            assert oct(os.stat(tmp_path / sub / name).st_mode & 0o777) == "0o644", name


def test_a_moved_google_checkpoint_loads_cleanly(cased, tmp_path):
    folder, encoder = cased
    prefix = checkpoints.save(encoder, str(tmp_path / "a" / "bert_model.ckpt"), "google")
    assert str(tmp_path) not in (tmp_path / "a" / "checkpoint").read_text()
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not os.path.exists(prefix + ".index")
    script = ("from kbert import checkpoints; import sys; "
              "m = checkpoints.load(sys.argv[1]); print(m.bert_config.vocab_size)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "b")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "17"
    assert "not found" not in result.stderr.lower() and " E tensorflow" not in result.stderr


def test_load_reads_kbert_keras_files_and_run_folders(cased, tmp_path):
    _, encoder = cased
    run = tmp_path / "run"
    run.mkdir()
    encoder.save(str(run / "encoder.keras"))
    assert checkpoints.detect_format(str(run)) == "keras"
    for source in (run, run / "encoder.keras"):
        loaded = checkpoints.load(str(source), dtype="mixed_bfloat16")
        assert loaded.dtype_policy.name == loaded.embeddings.dtype_policy.name == "mixed_bfloat16"
        for a, b in zip(loaded.get_weights(), encoder.get_weights()):
            np.testing.assert_array_equal(a, b)
    classifier = BertClassifier(encoder, num_classes=2)
    classifier.save(str(tmp_path / "model.keras"))
    loaded = checkpoints.load(str(tmp_path / "model.keras"))
    for a, b in zip(loaded.get_weights(), encoder.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_find_vocabulary_names_what_is_missing(cased, tmp_path):
    folder, _ = cased
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError, match=f"No such file, folder or checkpoint: {missing}"):
        checkpoints.load_tokenizer(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"No vocab.txt \(or \*vocab\*.txt\) in .*empty"):
        checkpoints.load_tokenizer(str(empty))
    # HuggingFace-style names, and a vocabulary file passed directly.
    shutil.copyfile(folder / "vocab.txt", empty / "bert-base-cased-vocab.txt")
    assert checkpoints.load_tokenizer(str(empty)).lowercase is False
    assert checkpoints.load_tokenizer(str(empty / "bert-base-cased-vocab.txt")).vocab_size == 17
    shutil.copyfile(folder / "vocab.txt", empty / "other-vocab.txt")
    with pytest.raises(ValueError, match="several vocabularies"):
        checkpoints.load_tokenizer(str(empty))


def test_write_folder_rejects_an_unresolved_casing(cased, tmp_path):
    folder, encoder = cased
    with pytest.raises(TypeError, match="lowercase must be True or False; received None"):
        huggingface.write_folder(checkpoints.read_model(encoder), encoder.bert_config,
                                 str(tmp_path / "hf"), str(folder / "vocab.txt"), None)
    assert os.listdir(tmp_path) == []


def test_pretraining_on_a_cased_vocab_file_stays_cased(cased, tmp_path):
    folder, _ = cased
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris.\nParis is in France.\n\n"
                      "The capital is Paris.\nA capital is a capital.\n", encoding="utf-8")
    run = tmp_path / "run"
    result = _program("trainers.pretrain", f"--model_dir={run}", f"--corpus={corpus}",
                      f"--vocab_file={folder / 'vocab.txt'}", "--preset=bert_tiny",
                      "--train_steps=2", "--global_batch_size=2", "--sequence_length=16",
                      "--max_predictions_per_seq=2", "--dupe_factor=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((run / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert checkpoints.load_tokenizer(str(run)).lowercase is False
    assert _kbert_ids(run) == _kbert_ids(folder)


def test_bert_tokenizer_infers_the_casing_it_is_not_told(cased, uncased_vocab):
    from kbert.text import BertTokenizer

    folder, _ = cased
    assert BertTokenizer(str(folder / "vocab.txt")).lowercase is False
    assert BertTokenizer(SPECIAL + WORDS).lowercase is False
    assert BertTokenizer(uncased_vocab).lowercase is True
    assert BertTokenizer(str(folder / "vocab.txt"), lowercase=True).lowercase is True


def test_save_refuses_what_it_cannot_write(cased, tmp_path):
    folder, encoder = cased
    with pytest.raises(TypeError, match="save takes a kbert BertEncoder or BertPretrainer; "
                                        "received BertClassifier"):
        checkpoints.save(BertClassifier(encoder, num_classes=2), str(tmp_path / "hf"))
    bad = tmp_path / "latin1" / "vocab.txt"
    bad.parent.mkdir()
    bad.write_bytes("\n".join(SPECIAL + WORDS[:-1]).encode() + b"\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"vocab.txt:17: not UTF-8 \(byte 0xe9 at column 4\)"):
        checkpoints.save(encoder, str(tmp_path / "hf"), vocab_path=str(bad))
    # A folder as the Google target gets Google's usual prefix inside it.
    prefix = checkpoints.save(encoder, str(tmp_path / "g") + "/", format="google")
    assert prefix == str(tmp_path / "g" / "bert_model.ckpt")
    assert sorted(os.listdir(tmp_path / "g")) == [
        "bert_config.json", "bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index",
        "checkpoint"]
    assert sorted(os.listdir(tmp_path)) == ["g", "latin1"]


def test_export_encoder_publishes_nothing_unless_both_files_check_out(cased, tmp_path):
    from kbert.serving import ExportVerificationError, encoder_export

    folder, encoder = cased
    source = tmp_path / "hf"
    checkpoints.save(encoder, str(source), vocab_path=str(folder / "vocab.txt"))
    out = tmp_path / "out"
    # Refused before anything is created.
    for kwargs, error, message in [
        ({"sequence_length": 1000}, ValueError, r"sequence_length=1000 must be in \[3, "),
        ({"version": 0}, ValueError, "version=0 must be >= 1"),
        ({"vocab_file": str(tmp_path / "none.txt")}, FileNotFoundError, "none.txt does not exist"),
        ({"tflite_recipes": ["float32", "int4"]}, ValueError, "recipe='int4' is not a TFLite recipe"),
        ({"tflite_recipes": ["int8_selective"]}, ValueError, "give representative_texts"),
        ({"tflite_recipes": ["float32", "float32"]}, ValueError, "must name each recipe once"),
        ({"representative_texts": ["a b"]}, ValueError,
         r"representative_texts calibrate \['int8_selective'\] only"),
    ]:
        with pytest.raises(error, match=message):
            encoder_export.export_encoder(str(source), str(out), **{"version": 1, "sequence_length": 16, **kwargs})
        assert not out.exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file is a file, not a folder"):
        encoder_export.export_encoder(str(source), str(tmp_path / "a_file"), 1, 16)
    # A failed check (no tolerance at all) leaves no version for TF Serving to pick up.
    with pytest.raises(ExportVerificationError):
        encoder_export.export_encoder(str(source), str(out), 1, 16, texts=[SENTENCE], atol=-1.0)
    assert os.listdir(out) == []
