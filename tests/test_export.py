"""SavedModel and TFLite exports, each compared numerically with the Keras model."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kbert.models import BertEncoder
from kbert.serving import (
    ExportVerificationError,
    export_saved_model,
    export_tflite,
    run_saved_model_in_fresh_process,
    run_tflite,
    verify_saved_model,
    verify_tflite,
)
from kbert.text import BertPacker
from tests.numpy_bert import randomize, tiny_encoder

TEXTS = ["Héllo, WORLD!", "", "I love 北京 !", "the quick brown fox " * 40]


@pytest.fixture(scope="module")
def encoder(uncased_tokenizer):
    return tiny_encoder(uncased_tokenizer.vocab_size, seed=3)


@pytest.fixture(scope="module")
def saved_model(encoder, uncased_tokenizer, uncased_vocab, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "bert"
    vocab_copy = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    shutil.copyfile(uncased_vocab, vocab_copy)
    path = export_saved_model(encoder, uncased_tokenizer, str(vocab_copy), str(base), sequence_length=32)
    return path, vocab_copy


def _packed(tokenizer, texts, length=32):
    special = tokenizer.special_token_ids
    packer = BertPacker(length, special["cls"], special["sep"], special["pad"])
    return {k: v.numpy() for k, v in packer(tokenizer(tf.constant(texts))).items()}


def test_saved_model_layout_and_fresh_process(saved_model, encoder, uncased_tokenizer):
    path, _ = saved_model
    assert path.endswith(os.path.join("bert", "1"))
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert os.path.exists(os.path.join(path, "assets", "vocab.txt"))
    diff = verify_saved_model(path, encoder, uncased_tokenizer, TEXTS, sequence_length=32)
    assert diff <= 1e-4
    # (Scalar and matrix requests, refused in a fresh process: test_export_requests.)


def test_saved_model_survives_move_and_vocab_deletion(saved_model, encoder, uncased_tokenizer, tmp_path):
    path, vocab_copy = saved_model
    moved = tmp_path / "elsewhere" / "1"
    shutil.copytree(path, moved)
    os.remove(vocab_copy)
    try:
        out = run_saved_model_in_fresh_process(str(moved), TEXTS)
    finally:
        shutil.copyfile(moved / "assets" / "vocab.txt", vocab_copy)
    features = _packed(uncased_tokenizer, TEXTS)
    expected = encoder(features)
    np.testing.assert_allclose(out["pooled_output"], expected["pooled_output"], atol=1e-4)
    np.testing.assert_array_equal(out["padding_mask"], features["padding_mask"])
    # The long text is truncated to 32 and the signature says how long it was.
    assert out["num_wordpieces"].tolist() == [4, 0, 5, 160]


def test_saved_model_signatures_in_process(saved_model, encoder, uncased_tokenizer):
    path, _ = saved_model
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    loaded = tf.saved_model.load(path)
    features = _packed(uncased_tokenizer, TEXTS)
    # Token-id signature at a length other than the text signature's.
    ids = {k: tf.constant(v[:, :20]) for k, v in features.items()}
    out = loaded.signatures["serving_token_ids"](**ids)
    expected = encoder({k: v.numpy() for k, v in ids.items()})
    m = features["padding_mask"][:, :20].astype(bool)
    np.testing.assert_allclose(out["sequence_output"].numpy()[m], expected["sequence_output"].numpy()[m], atol=1e-4)
    np.testing.assert_allclose(out["pooled_output"], expected["pooled_output"], atol=1e-4)
    pieces = loaded.signatures["serving_wordpieces"](text=tf.constant(["Héllo, WORLD!"]))
    assert pieces["wordpieces"].numpy()[0][:6].tolist() == [b"[CLS]", b"hello", b",", b"world", b"!", b"[SEP]"]
    too_long = {k: tf.zeros((1, 65), tf.int32) for k in ids}
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_position_embeddings=64"):
        loaded.signatures["serving_token_ids"](**too_long)


def test_verify_saved_model_catches_a_mismatch(saved_model, encoder, uncased_tokenizer):
    path, _ = saved_model
    other = BertEncoder.from_config(encoder.get_config())
    randomize(other, seed=9, scale=0.1)
    with pytest.raises(ExportVerificationError, match="differs from the Keras model"):
        verify_saved_model(path, other, uncased_tokenizer, TEXTS[:1], sequence_length=32)


def test_tflite_builtin_ops_and_parity(encoder, uncased_tokenizer, tmp_path):
    path = str(tmp_path / "bert.tflite")
    export_tflite(encoder, path, sequence_length=32)
    for text in TEXTS:
        features = _packed(uncased_tokenizer, [text])
        assert verify_tflite(path, encoder, features) <= 1e-4
    interpreter = tf.lite.Interpreter(model_path=path)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("Flex") or name == "CUSTOM" for name in ops), ops
    inputs = interpreter.get_signature_runner("serving_token_ids").get_input_details()
    assert {name: tuple(d["shape"]) for name, d in inputs.items()} == {
        "token_ids": (1, 32), "segment_ids": (1, 32), "padding_mask": (1, 32)}
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=64"):
        export_tflite(encoder, path, sequence_length=65)


def test_export_program_end_to_end(tmp_path, uncased_vocab, wikitext_valid):
    """trainers.pretrain (a few steps) then export.export_bert, as the README runs them."""
    from tests.conftest import REPO

    corpus = tmp_path / "corpus.txt"
    with open(wikitext_valid, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:200]), encoding="utf-8")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "trainers.pretrain", f"--model_dir={run}", f"--corpus={corpus}",
         f"--vocab_file={uncased_vocab}", "--train_steps=4", "--checkpoint_every=2",
         "--global_batch_size=4", "--sequence_length=32", "--max_predictions_per_seq=4",
         "--mixed_precision=mixed_bfloat16"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
    )
    # The run's .keras files load after `import kbert` alone (the compiled pretrainer names
    # kbert's learning-rate schedule), and as checkpoints.
    script = ("import sys, keras, kbert; from kbert import checkpoints; "
              "keras.saving.load_model(sys.argv[1] + '/pretrainer.keras'); "
              "print(type(checkpoints.load(sys.argv[1], pretraining=True)).__name__)")
    loaded = subprocess.run([sys.executable, "-c", script, str(run)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "BertPretrainer", loaded.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-m", "export.export_bert", f"--model_dir={run}",
         f"--output_dir={tmp_path / 'export'}", "--sequence_length=32"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SavedModel pooled_output" in out.stdout and "TFLite pooled_output" in out.stdout
    # Every published file passed the validator first: its table ends the output.
    table = out.stdout[out.stdout.index("Validated"):]
    for row in ("saved_model/bert/1  ", "bert_v1.tflite  ", "bert_text_v1.tflite  "):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert line.endswith(" ok"), table
    # The run folder has the masked-LM head: the SavedModel answers fill-mask requests.
    assert "SavedModel serving_fill_mask for 'The capital of France is [MASK].', [MASK] 1: '" \
        in out.stdout, out.stdout
    sm = run_saved_model_in_fresh_process(str(tmp_path / "export" / "saved_model" / "bert" / "1"), ["a b c"])
    assert np.isfinite(sm["pooled_output"]).all()
    # A rerun never overwrites a version: an explicit existing one is refused in one line.
    again = subprocess.run(
        [sys.executable, "-m", "export.export_bert", f"--checkpoint={run}",
         f"--output_dir={tmp_path / 'export'}", "--sequence_length=32", "--version=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert again.returncode == 1
    # (the test's TF_CPP_MIN_LOG_LEVEL=2 lets TensorFlow's own error lines through; the
    # program's reason is the last line)
    assert again.stderr.strip().splitlines()[-1] == (
        f"export_bert: {tmp_path / 'export' / 'saved_model' / 'bert' / '1'} exists; "
        "export another version or remove it.")
    tfl = run_tflite(str(tmp_path / "export" / "bert_v1.tflite"),
                     {k: np.zeros((1, 32), np.int32) for k in ("token_ids", "segment_ids", "padding_mask")})
    assert tfl["pooled_output"].shape == (1, 128)
