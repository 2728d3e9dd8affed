"""Task models (classifier, token classifier, span labeler): NumPy heads on the NumPy encoder,
padding invariance, `.keras` round trips, mixed precision, `inference_copy`, argument errors."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from kbert.models import (
    BertClassifier,
    BertEncoder,
    BertPretrainer,
    BertSpanLabeler,
    BertTokenClassifier,
    inference_copy,
)
from tests.numpy_bert import bert_forward, randomize, softmax, weights_from_kbert

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=32, max_position_embeddings=20, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)
# BERT's defaults: the heads take 0.1 dropout from `hidden_dropout_prob`.
WITH_DROPOUT = dict(SMALL, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
PADDING_LOGIT = -1e9  # what the span labeler's docstring promises for padding positions


def _features(batch=3, length=7, vocab=50, seed=0):
    """Rows with 4, 6 and 7 real tokens (the last one unpadded)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), "int32")
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    return {
        "token_ids": (rng.integers(1, vocab, (batch, length)) * mask).astype("int32"),
        "segment_ids": (rng.integers(0, 2, (batch, length)) * mask).astype("int32"),
        "padding_mask": mask,
    }


def _padded(x, extra=5):
    return {k: np.pad(v, ((0, 0), (0, extra))) for k, v in x.items()}


def _make(kind, encoder, **kwargs):
    if kind == "classifier":
        return BertClassifier(encoder, num_classes=kwargs.pop("num_classes", 3), **kwargs)
    if kind == "token_classifier":
        return BertTokenClassifier(encoder, num_classes=kwargs.pop("num_classes", 5), **kwargs)
    return BertSpanLabeler(encoder, **kwargs)


def _random_model(kind, config=SMALL, dtype=None, seed=0, **kwargs):
    model = _make(kind, BertEncoder(**config, dtype=dtype), **kwargs)
    randomize(model, seed=seed, scale=0.3)
    return model


def _numpy(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return np.asarray(outputs)


def _numpy_head(kind, model, x):
    """The head in float64 NumPy on the NumPy encoder's outputs."""
    seq, pooled = bert_forward(x["token_ids"], x["segment_ids"], x["padding_mask"],
                               weights_from_kbert(model.encoder), num_heads=4)
    kernel = np.asarray(model.output_dense.kernel.numpy(), np.float64)
    bias = np.asarray(model.output_dense.bias.numpy(), np.float64)
    if kind == "classifier":
        return pooled @ kernel + bias  # (B, C)
    logits = seq @ kernel + bias  # (B, T, C)
    if kind == "token_classifier":
        return logits
    real = x["padding_mask"].astype(bool)
    return {"start_logits": np.where(real, logits[..., 0], PADDING_LOGIT),
            "end_logits": np.where(real, logits[..., 1], PADDING_LOGIT)}


KINDS = ["classifier", "token_classifier", "span_labeler"]


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_numpy_head_in_inference_mode(kind):
    # Dropout 0.1 (the encoder's default) is active only in training.
    model = _random_model(kind, config=WITH_DROPOUT)
    if kind != "span_labeler":
        assert model.dropout == 0.1
    x = _features()
    expected = _numpy_head(kind, model, x)
    got = _numpy(model(x, training=False))
    real = x["padding_mask"].astype(bool)
    if kind == "classifier":
        assert got.shape == (3, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
    elif kind == "token_classifier":
        assert got.shape == (3, 7, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got[real], expected[real], atol=1e-5)
    else:
        for name in ("start_logits", "end_logits"):
            assert got[name].shape == (3, 7) and got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5)
            assert (got[name][~real] == PADDING_LOGIT).all()
    # The comparison above can fail: with dropout on, outputs move away from the reference.
    trained = _numpy(model(x, training=True))
    if kind == "classifier":
        assert np.abs(trained - expected).max() > 1e-3
    elif kind == "token_classifier":
        assert np.abs(trained[real] - expected[real]).max() > 1e-3


def test_dropout_zero_matches_numpy_even_in_training_mode():
    model = _random_model("classifier", dropout=0.0)  # SMALL: no dropout in the encoder either
    x = _features()
    np.testing.assert_allclose(model(x, training=True), _numpy_head("classifier", model, x),
                               atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_real_positions(kind):
    model = _random_model(kind)
    x = _features()
    a = _numpy(model(x))
    b = _numpy(model(_padded(x)))
    real = x["padding_mask"].astype(bool)
    if kind == "classifier":
        np.testing.assert_allclose(b, a, atol=1e-5)
    elif kind == "token_classifier":
        assert b.shape == (3, 12, 5)
        np.testing.assert_allclose(b[:, :7][real], a[real], atol=1e-5)
    else:
        for name in ("start_logits", "end_logits"):
            np.testing.assert_allclose(b[name][:, :7][real], a[name][real], atol=1e-5)
            assert (b[name][:, 7:] == PADDING_LOGIT).all()
            # Softmax over each padded row equals softmax over the row without padding.
            for row in range(3):
                n = int(real[row].sum())
                unpadded = model({k: v[row:row + 1, :n] for k, v in x.items()})[name].numpy()
                assert unpadded.max() > -1e3  # no padding in it
                expected = softmax(unpadded.astype(np.float64))[0]
                probs = softmax(b[name][row].astype(np.float64))
                np.testing.assert_allclose(probs[:n], expected, atol=1e-6)
                np.testing.assert_array_equal(probs[n:], 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_get_config_from_config(kind):
    model = _random_model(kind, config=WITH_DROPOUT, **({} if kind == "span_labeler" else
                                                       {"dropout": 0.25}))
    config = model.get_config()
    if kind != "span_labeler":
        assert (config["num_classes"], config["dropout"]) == (model.num_classes, 0.25)
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert clone.encoder.bert_config == model.encoder.bert_config
    clone.set_weights(model.get_weights())
    x = _features()
    a, b = _numpy(model(x)), _numpy(clone(x))
    for name in (a if isinstance(a, dict) else [None]):
        np.testing.assert_array_equal(b if name is None else b[name], a if name is None else a[name])


@pytest.mark.parametrize("kind", ["classifier", "token_classifier"])
def test_keras_file_round_trip(kind, tmp_path):
    model = _random_model(kind)
    path = str(tmp_path / f"{kind}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.num_classes == model.num_classes
    x = _features()
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_span_labeler_reloads_in_fresh_process_with_only_import_kbert(tmp_path):
    model = _random_model("span_labeler")
    path = str(tmp_path / "span.keras")
    model.save(path)
    x = _features()
    np.savez(tmp_path / "x.npz", **x)
    script = (
        "import sys, numpy as np, keras, kbert\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "assert type(m).__name__ == 'BertSpanLabeler', type(m)\n"
        "y = m(dict(np.load(sys.argv[2])))\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in y.items()})\n"
    )
    subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "x.npz"),
                    str(tmp_path / "y.npz")], check=True, cwd=str(tmp_path))
    y = np.load(tmp_path / "y.npz")
    expected = model(x)
    assert sorted(y.files) == ["end_logits", "start_logits"]
    for name in y.files:
        np.testing.assert_array_equal(y[name], expected[name].numpy())


def _bf16_pair(kind):
    reference = _random_model(kind)
    mixed = _make(kind, BertEncoder(**SMALL, dtype="mixed_bfloat16"))
    mixed.set_weights(reference.get_weights())
    return reference, mixed


def _flat(outputs):
    outputs = _numpy(outputs)
    return np.concatenate([outputs[k].ravel() for k in sorted(outputs)]) if isinstance(
        outputs, dict) else outputs.ravel()


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_bfloat16_gives_float32_logits_close_to_float32(kind):
    reference, mixed = _bf16_pair(kind)
    assert mixed.encoder.embeddings.dtype_policy.name == "mixed_bfloat16"
    x = _features()
    out = mixed(x)
    for tensor in (out.values() if isinstance(out, dict) else [out]):
        assert tensor.dtype == "float32"
    real = x["padding_mask"].astype(bool)
    got, expected = _numpy(out), _numpy(reference(x))
    if kind == "span_labeler":
        got, expected = (np.stack([d["start_logits"][real], d["end_logits"][real]])
                         for d in (got, expected))
    elif kind == "token_classifier":
        got, expected = got[real], expected[real]
    assert np.isfinite(got).all()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=0.05 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_inference_copy_of_mixed_model_computes_in_float32(kind):
    reference, mixed = _bf16_pair(kind)
    mixed.compile(optimizer="adam", loss="mse")
    copy = inference_copy(mixed)
    assert type(copy) is type(mixed) and copy is not mixed
    assert mixed.compiled and not copy.compiled and getattr(copy, "optimizer", None) is None
    assert copy.encoder.embeddings.dtype_policy.name == "float32"
    assert all(layer.dtype_policy.name == "float32" for layer in copy.encoder.transformer_layers)
    assert copy.get_config()["encoder"]["config"]["dtype"]["config"]["name"] == "float32"
    x = _features()
    want, bf16 = _flat(reference(x)), _flat(mixed(x))
    got = _flat(copy(x))
    finite = want > PADDING_LOGIT / 2
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=1e-6)
    # ... which the bfloat16 model itself does not do (so the check above can fail).
    assert np.abs(bf16[finite] - want[finite]).max() > 1e-4
    # The source model is untouched.
    assert mixed.encoder.embeddings.dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_array_equal(_flat(mixed(x)), bf16)


def test_inference_copy_of_encoder_and_head_arguments():
    reference = _random_model("classifier", config=WITH_DROPOUT, dropout=0.3, name="sst2")
    copy = inference_copy(reference)
    assert (copy.num_classes, copy.dropout, copy.name) == (3, 0.3, "sst2")
    encoder_copy = inference_copy(reference.encoder, dtype="mixed_bfloat16")
    assert isinstance(encoder_copy, BertEncoder)
    assert encoder_copy.embeddings.dtype_policy.name == "mixed_bfloat16"
    for a, b in zip(encoder_copy.weights, reference.encoder.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_argument_errors_name_the_value():
    encoder = BertEncoder(**SMALL)
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 1.*received 0\."):
        BertClassifier(encoder, num_classes=0)
    with pytest.raises(ValueError, match=r"received True\."):
        BertClassifier(encoder, num_classes=True)
    with pytest.raises(ValueError, match=r"received 2\.0\."):
        BertClassifier(encoder, num_classes=2.0)
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 2; received 1\."):
        BertTokenClassifier(encoder, num_classes=1)
    with pytest.raises(ValueError, match=r"received False\."):
        BertTokenClassifier(encoder, num_classes=False)
    for cls in (BertClassifier, BertTokenClassifier):
        with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\); received 1\.0\."):
            cls(encoder, num_classes=2, dropout=1.0)
        with pytest.raises(ValueError, match=r"received -0\.1\."):
            cls(encoder, num_classes=2, dropout=-0.1)
    pretrainer = BertPretrainer(BertEncoder(**SMALL))
    for make in (lambda e: BertClassifier(e, 2), lambda e: BertTokenClassifier(e, 2),
                 BertSpanLabeler):
        with pytest.raises(ValueError, match="must be a kbert BertEncoder; received Dense"):
            make(keras.layers.Dense(3))
        with pytest.raises(ValueError, match="received BertPretrainer"):
            make(pretrainer)
    # A regression head (num_classes=1) is allowed for the classifier.
    assert BertClassifier(encoder, num_classes=1).output_shape == (None, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_float_ids_rejected(kind):
    model = _make(kind, BertEncoder(**SMALL))
    x = _features()
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float32"):
        model(dict(x, token_ids=x["token_ids"].astype("float32")))
    with pytest.raises(TypeError, match="`segment_ids` must hold integer ids; received dtype float64"):
        model(dict(x, segment_ids=x["segment_ids"].astype("float64")))
    name = type(model).__name__
    with pytest.raises(ValueError, match=rf"{name} takes a dict.*'input_ids' -> 'token_ids'"):
        model({"input_ids": x["token_ids"], "segment_ids": x["segment_ids"],
               "padding_mask": x["padding_mask"]})


def test_regression_head_trains_with_mse():
    keras.utils.set_random_seed(0)
    encoder = BertEncoder(**SMALL)
    model = BertClassifier(encoder, num_classes=1)
    x = _features(batch=16, length=8, seed=1)
    # A learnable target: the share of a row's real tokens with id < 25.
    real = x["padding_mask"].astype(bool)
    y = (((x["token_ids"] < 25) & real).sum(1) / real.sum(1)).astype("float32")
    assert y.std() > 0.05

    def numpy_mse():
        predictions = model.predict(x, verbose=0)
        assert predictions.shape == (16, 1)
        return float(np.mean((predictions[:, 0].astype(np.float64) - y) ** 2))

    before = numpy_mse()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=40, verbose=0, shuffle=False)
    # Keras' first loss is the MSE of the untrained model: labels (16,) against
    # logits (16, 1) are not broadcast to (16, 16).
    assert history.history["loss"][0] == pytest.approx(before, rel=1e-4)
    after = numpy_mse()
    assert after < 0.2 * before, (before, after)
