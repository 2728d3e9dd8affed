"""Encoder exports at the boundary: requests checked in the graph (issue 9, fault 1), each
weight stored once (fault 5b), atomic writes (fault 4), TFLite inputs checked against the file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kbert.serving import export_saved_model, export_tflite, run_tflite, verify_tflite
from tests.numpy_bert import tiny_encoder
from tests.saved_model_requests import (
    folder_size,
    requests_in_fresh_process,
    stored_tensors,
    weights_nbytes,
)
from tests.test_export import TEXTS, _packed


@pytest.fixture(scope="module")
def encoder(uncased_tokenizer):
    """One block, hidden size 32, 64 positions; the uncased vocabulary (3.9 MB of embeddings)."""
    return tiny_encoder(uncased_tokenizer.vocab_size, seed=5, num_hidden_layers=1,
                        num_attention_heads=2)


@pytest.fixture(scope="module")
def saved_model(encoder, uncased_tokenizer, uncased_vocab, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "bert"
    return export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(base), sequence_length=32)


@pytest.fixture(scope="module")
def tflite_file(encoder, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tflite") / "bert.tflite")
    export_tflite(encoder, path, sequence_length=32)
    return path


# --- Requests checked at the boundary ------------------------------------------------------


def _ids(tokenizer, texts=TEXTS[:2], length=20):
    return {k: v[:, :length] for k, v in _packed(tokenizer, list(texts)).items()}


@pytest.mark.parametrize("signature", ["serving_token_ids", "serving_token_ids_int64"])
def test_token_ids_signatures_refuse_bad_requests_naming_the_input(saved_model, encoder,
                                                                   uncased_tokenizer, signature):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    path = saved_model
    function = tf.saved_model.load(path).signatures[signature]
    dtype = tf.int64 if signature.endswith("int64") else tf.int32
    ids = _ids(uncased_tokenizer)

    def call(**overrides):
        return function(**{k: tf.constant(v, dtype) for k, v in dict(ids, **overrides).items()})

    out = call()
    expected = encoder(ids)
    np.testing.assert_allclose(out["pooled_output"], expected["pooled_output"], atol=1e-4)
    bad = {
        r"`token_ids` must be ids of shape \(batch_size, sequence_length\); received shape\] \[20\]":
            {"token_ids": ids["token_ids"][0]},
        r"`segment_ids` must be ids of shape \(batch_size, sequence_length\); received shape\] \[2 20 1\]":
            {"segment_ids": ids["segment_ids"][..., None]},
        r"`segment_ids` must have the shape of `token_ids`\] \[2 20\] \[received shape\] \[2 19\]":
            {"segment_ids": ids["segment_ids"][:, :19]},
        r"`padding_mask` must have the shape of `token_ids`\] \[2 20\] \[received shape\] \[1 20\]":
            {"padding_mask": ids["padding_mask"][:1]},
        r"`token_ids` must have sequence length <= max_position_embeddings=64; received shape\] \[1 65\]":
            {k: np.zeros((1, 65), "int32") for k in ids},
    }
    for message, overrides in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call(**overrides)
    out_of_range = {"token_ids": ids["token_ids"] + 30522}
    if dtype == tf.int64:
        # Checked before the cast to int32, which would wrap 2**32 + 5 to 5.
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`token_ids` must hold ids in \[0, 30522\)"):
            call(token_ids=ids["token_ids"].astype("int64") + 2**32)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`segment_ids` must hold ids in \[0, 2\)"):
            call(segment_ids=ids["segment_ids"] - 1)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match="`token_ids` holds an id >= 30522"):
            call(**out_of_range)
        # TensorFlow refuses an int64 tensor here by itself; the int64 signature takes it.
        with pytest.raises(tf.errors.InvalidArgumentError, match="int32"):
            function(**{k: tf.constant(v, tf.int64) for k, v in ids.items()})


def test_text_and_ids_requests_in_fresh_process(saved_model, encoder, uncased_tokenizer):
    """As TF Serving loads it: batches of 1 and 256 with empty strings, bad requests named."""
    path = saved_model
    texts = ["" if i % 7 == 0 else " ".join(["word", str(i), "Ünïcode 北京"][: i % 4]) for i in range(256)]
    ids = _ids(uncased_tokenizer)
    results = requests_in_fresh_process(path, [
        {"signature": "serving_default", "inputs": {"text": [""]}},
        {"signature": "serving_default", "inputs": {"text": ["hello world"]}},
        {"signature": "serving_default", "inputs": {"text": texts}},
        {"signature": "serving_wordpieces", "inputs": {"text": "hello"}},
        {"signature": "serving_wordpieces", "inputs": {"text": [["a", "b"]]}},
        {"signature": "serving_token_ids", "inputs": dict(ids, token_ids=ids["token_ids"][0].tolist())},
        {"signature": "serving_token_ids_int64", "inputs": {k: v.tolist() for k, v in ids.items()},
         "dtypes": {k: "int64" for k in ids}},
    ])
    for result, batch in zip(results[:3], (["" ], ["hello world"], texts)):
        features = _packed(uncased_tokenizer, batch)
        expected = encoder(features)
        out = result["outputs"]
        assert out["pooled_output"].shape == (len(batch), 32)
        np.testing.assert_allclose(out["pooled_output"], expected["pooled_output"], atol=1e-4)
        np.testing.assert_array_equal(out["padding_mask"], features["padding_mask"])
    assert results[0]["outputs"]["num_wordpieces"].tolist() == [0]
    for result in results[3:5]:
        assert r"`text` must be a batch of strings of shape (batch_size,)" in result["error"]
    assert "`token_ids` must be ids of shape (batch_size, sequence_length); received shape] [20]" in results[5]["error"]
    np.testing.assert_allclose(results[6]["outputs"]["pooled_output"], encoder(ids)["pooled_output"], atol=1e-4)


# --- Each weight stored once (issue 9, fault 5b) -------------------------------------------


def test_saved_model_stores_each_weight_once(saved_model, encoder):
    path = saved_model
    tensors = stored_tensors(path)
    # Before: every weight twice, as `variables/N` (tracked model) and `_all_variables/N`
    # (captured by the endpoints).
    assert len(tensors) == len(encoder.weights), sorted(tensors)
    assert sorted(tuple(s) for s in tensors.values()) == sorted(tuple(w.shape) for w in encoder.weights)
    size, weights = folder_size(os.path.join(path, "variables")), weights_nbytes(encoder)
    assert weights <= size <= 1.1 * weights, (size, weights)


# --- Atomic writes (issue 9, fault 4) -----------------------------------------------------


def _failing(monkeypatch, owner, name, run_first):
    """Makes `owner.name` raise; with `run_first`, after doing its work (a disk full at the end)."""
    original = getattr(owner, name)

    def fail(*args, **kwargs):
        if run_first:
            original(*args, **kwargs)
        raise OSError(f"simulated failure in {name}")

    monkeypatch.setattr(owner, name, fail)


@pytest.mark.parametrize("step", ["trace", "save", "rename"])
def test_failed_saved_model_export_leaves_nothing(encoder, uncased_tokenizer, uncased_vocab, tmp_path,
                                                  monkeypatch, step):
    import kbert.serving.saved_model as saved_model_module

    base = tmp_path / "bert"
    if step == "trace":
        original = saved_model_module.text_to_inputs

        def broken(*args):
            if tf.executing_eagerly():  # the warmup requests, built before the archive is traced
                return original(*args)
            raise RuntimeError("simulated failure in tracing")

        monkeypatch.setattr(saved_model_module, "text_to_inputs", broken)
    elif step == "save":
        _failing(monkeypatch, tf.saved_model, "save", run_first=True)
    else:
        _failing(monkeypatch, os, "rename", run_first=False)
    with pytest.raises((OSError, RuntimeError), match="simulated failure"):
        export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(base), sequence_length=16)
    assert not (base / "1").exists()
    assert os.listdir(base) == []  # no temporary folder left either


@pytest.mark.parametrize("existing", [False, True])
def test_failed_tflite_export_leaves_nothing(encoder, tmp_path, monkeypatch, existing):
    path = tmp_path / "out" / "bert.tflite"
    if existing:
        path.parent.mkdir()
        path.write_bytes(b"previous file")
    _failing(monkeypatch, os, "replace", run_first=False)
    with pytest.raises(OSError, match="simulated failure"):
        export_tflite(encoder, str(path), sequence_length=16)
    monkeypatch.undo()
    # The previous file is replaced only by a complete new one.
    assert (path.read_bytes() == b"previous file") if existing else not path.exists()
    assert os.listdir(path.parent) == (["bert.tflite"] if existing else [])


def test_export_validates_before_writing(encoder, uncased_tokenizer, uncased_vocab, tmp_path):
    base = tmp_path / "bert"
    (base / "1").mkdir(parents=True)
    with pytest.raises(ValueError, match="exists; export to a new version"):
        export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(base), sequence_length=16)
    for bad, message in ((65, "sequence_length=65 exceeds max_position_embeddings=64"),
                         (1, r"sequence_length=1 must be an int >= 3")):
        with pytest.raises(ValueError, match=message):
            export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(base), bad, version=2)
        with pytest.raises(ValueError, match=message):
            export_tflite(encoder, str(tmp_path / "x.tflite"), sequence_length=bad)
    with pytest.raises(ValueError, match="version=0 must be an int >= 1"):
        export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(base), 16, version=0)
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        export_tflite(encoder, str(tmp_path / "x.tflite"), sequence_length=16, batch_size=0)
    assert os.listdir(base) == ["1"] and not (tmp_path / "x.tflite").exists()


# --- TFLite inputs checked against the file's fixed shape ---------------------------------


def test_tflite_runner_refuses_other_shapes(tflite_file, encoder, uncased_tokenizer):
    """Before: XNNPack's opaque "failed to reshape" error from the resized interpreter."""
    good = _packed(uncased_tokenizer, ["hello world"])
    accepted = r"takes `token_ids` of shape \(1, 32\) \(batch size 1, sequence length 32, fixed when it was exported\)"
    for features, received in (
        (_packed(uncased_tokenizer, ["hello world"], length=40), r"\(1, 40\)"),
        (_packed(uncased_tokenizer, ["hello", "world"]), r"\(2, 32\)"),
        ({k: v[0] for k, v in good.items()}, r"\(32,\)"),
    ):
        for run in (lambda f: run_tflite(tflite_file, f), lambda f: verify_tflite(tflite_file, encoder, f)):
            with pytest.raises(ValueError, match=accepted + "; received shape " + received):
                run(features)
    with pytest.raises(ValueError, match=r"missing \['padding_mask'\]"):
        run_tflite(tflite_file, {k: good[k] for k in ("token_ids", "segment_ids")})
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float64"):
        run_tflite(tflite_file, dict(good, token_ids=good["token_ids"].astype("float64")))
    assert run_tflite(tflite_file, {k: v.astype("int64") for k, v in good.items()})["pooled_output"].shape == (1, 32)
