"""Input checks: the same errors from `__call__`, `predict`, `evaluate`, `fit` and the
`*_on_batch` methods of the encoder, the pretrainer and the task models (issue 9, fault 3)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.models import (
    BertClassifier,
    BertEncoder,
    BertPretrainer,
    BertSpanLabeler,
    BertTokenClassifier,
)
from kbert.models.input_checks import InvalidIdsError

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}
KINDS = ("encoder", "pretrainer", "classifier", "token_classifier", "span_labeler")
ENTRY_POINTS = ("call", "predict", "predict_on_batch", "evaluate", "fit", "train_on_batch",
                "test_on_batch")


def _features(batch=2, length=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, 100, (batch, length)).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }


def _make(kind):
    encoder = BertEncoder(**TINY)
    if kind == "encoder":
        return encoder
    if kind == "pretrainer":
        return BertPretrainer(encoder)
    if kind == "classifier":
        return BertClassifier(encoder, num_classes=2)
    if kind == "token_classifier":
        return BertTokenClassifier(encoder, num_classes=3)
    return BertSpanLabeler(encoder)


@pytest.fixture(scope="module")
def models():
    """One compiled model of each kind (the checks run before any loss is computed)."""
    built = {}
    for kind in KINDS:
        model = _make(kind)
        model.compile(optimizer="sgd", loss="mse")
        built[kind] = model
    return built


def _inputs(kind, x):
    if kind == "pretrainer" and "masked_lm_positions" not in x:
        x = dict(x, masked_lm_positions=np.zeros((len(x["token_ids"]), 2), "int32"))
    return x


def _run(model, entry, x):
    y = np.zeros((2,), "float32")
    if entry == "call":
        return model(x)
    if entry == "predict":
        return model.predict(x, verbose=0)
    if entry == "predict_on_batch":
        return model.predict_on_batch(x)
    if entry == "evaluate":
        return model.evaluate(x, y, verbose=0)
    if entry == "fit":
        return model.fit(x, y, epochs=1, verbose=0)
    if entry == "train_on_batch":
        return model.train_on_batch(x, y)
    return model.test_on_batch(x, y)


def test_predict_no_longer_truncates_float_ids():
    """The issue's example: predict used to return the output of [[1, 5, 2, 0]]."""
    encoder = BertEncoder(**TINY)
    x = {"token_ids": np.array([[1.7, 5.2, 2.0, 0.0]]), "segment_ids": np.zeros((1, 4), "int32"),
         "padding_mask": np.ones((1, 4), "int32")}
    for run in (encoder, lambda v: encoder.predict(v, verbose=0), encoder.predict_on_batch):
        with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float64"):
            run(x)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", KINDS)
def test_float_ids_rejected_at_every_entry_point(models, kind, entry):
    x = _inputs(kind, _features())
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float64"):
        _run(models[kind], entry, dict(x, token_ids=x["token_ids"].astype("float64")))
    with pytest.raises(TypeError, match="`segment_ids` must hold integer ids; received dtype float32"):
        _run(models[kind], entry, dict(x, segment_ids=x["segment_ids"].astype("float32")))


def _bad(case):
    x = _features()
    if case == "hf_keys":
        return {"input_ids": x["token_ids"], "token_type_ids": x["segment_ids"],
                "attention_mask": x["padding_mask"]}
    if case == "missing_key":
        return {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    if case == "id_too_large":
        return dict(x, token_ids=x["token_ids"] + 100)
    if case == "negative_segment":
        return dict(x, segment_ids=x["segment_ids"] - 1)
    if case == "segment_too_large":
        return dict(x, segment_ids=x["segment_ids"] + 2)
    if case == "too_long":
        return _features(length=65)
    if case == "shapes_differ":
        return dict(x, padding_mask=x["padding_mask"][:, :5])
    if case == "rank_1":
        return {k: v[0] for k, v in x.items()}
    if case == "list":
        return dict(x, token_ids=[[1, 2, 3], [4, 5]])
    raise AssertionError(case)


BAD_CASES = {
    "hf_keys": (ValueError, r"takes a dict with keys .*Rename HuggingFace keys: 'input_ids' -> 'token_ids'"),
    "missing_key": (ValueError, r"missing \['segment_ids'\]"),
    "id_too_large": (InvalidIdsError, (r"`token_ids` holds an id >= 100: \d+ at index \(\d, \d\); "
                                      r"ids must be in \[0, 100\), .*\(vocab_size\)")),
    "negative_segment": (InvalidIdsError, r"`segment_ids` holds a negative id: -1 at index \(0, 0\)"),
    "segment_too_large": (InvalidIdsError, r"`segment_ids` holds an id >= 2: 2 .*\(type_vocab_size\)"),
    "too_long": (ValueError, r"Sequence length 65 exceeds max_position_embeddings=64"),
    "shapes_differ": (ValueError, (r"`padding_mask` must have the shape of `token_ids` \(2, 6\); "
                                  r"received shape \(2, 5\)")),
    "rank_1": (ValueError, (r"`token_ids` must have shape \(batch_size, sequence_length\); "
                           r"received shape \(6,\)")),
    "list": (TypeError, r"`token_ids` must be a NumPy array or a tensor .*received a list"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_rejected_alike_at_every_entry_point(models, case, entry):
    error, message = BAD_CASES[case]
    with pytest.raises(error, match=message):
        _run(models["classifier"], entry, _bad(case))


@pytest.mark.parametrize("kind", ["encoder", "pretrainer", "token_classifier", "span_labeler"])
@pytest.mark.parametrize("case", ["id_too_large", "too_long", "shapes_differ"])
def test_bad_inputs_rejected_by_predict_of_every_model(models, kind, case):
    error, message = BAD_CASES[case]
    with pytest.raises(error, match=message):
        models[kind].predict(_inputs(kind, _bad(case)), verbose=0)


def test_invalid_ids_error_is_both_value_and_tf_error(models):
    x = _bad("id_too_large")
    for error in (ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(error):
            models["encoder"](x)
    error = InvalidIdsError("`token_ids` holds an id >= 100")
    assert str(error) == "`token_ids` holds an id >= 100"
    assert isinstance(error, ValueError) and isinstance(error, tf.errors.InvalidArgumentError)


def test_pretrainer_checks_masked_lm_positions(models):
    model = models["pretrainer"]
    x = _features()
    with pytest.raises(TypeError, match="`masked_lm_positions` must hold integer positions; received dtype float64"):
        model(dict(x, masked_lm_positions=np.ones((2, 2))))
    with pytest.raises(InvalidIdsError, match=r"`masked_lm_positions` holds a position >= 6: 6 at index \(1, 1\)"):
        model.predict(dict(x, masked_lm_positions=np.array([[0, 1], [2, 6]], "int32")), verbose=0)
    with pytest.raises(ValueError, match=r"`masked_lm_positions` must have the batch size of `token_ids`"):
        model.predict_on_batch(dict(x, masked_lm_positions=np.zeros((3, 2), "int32")))


def test_eager_float_tensors_rejected_by_call(models):
    x = _features()
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float32"):
        models["encoder"](dict(x, token_ids=tf.constant(x["token_ids"], tf.float32)))
    with pytest.raises(TypeError, match="`padding_mask` must hold 1 .* received dtype <U1"):
        models["encoder"](dict(x, padding_mask=np.full((2, 6), "1")))


def _dataset(x, with_labels=True, batch=2):
    data = tf.data.Dataset.from_tensor_slices(x)
    if with_labels:
        data = tf.data.Dataset.zip((data, tf.data.Dataset.from_tensor_slices(np.zeros(len(x["token_ids"]), "float32"))))
    return data.batch(batch) if batch else data


@pytest.mark.parametrize("entry", ["predict", "evaluate", "fit", "fit_validation"])
def test_dataset_element_spec_checked_up_front(models, entry):
    model = models["classifier"]
    x = _features()
    good = _dataset(x)
    float_ids = _dataset(dict(x, token_ids=x["token_ids"].astype("float32")))
    calls = {
        "predict": lambda d: model.predict(d, verbose=0),
        "evaluate": lambda d: model.evaluate(d, verbose=0),
        "fit": lambda d: model.fit(d, verbose=0),
        "fit_validation": lambda d: model.fit(good, validation_data=d, verbose=0),
    }
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; the dataset yields dtype float32"):
        calls[entry](float_ids)
    with pytest.raises(ValueError, match=r"`token_ids` must have shape \(batch_size, sequence_length\); "
                                         r"the dataset yields shape \(6,\) \(batch it first\)"):
        calls[entry](_dataset(x, batch=None))
    long = _features(length=65)
    fixed = tf.data.Dataset.from_tensors((long, np.zeros(2, "float32")))
    with pytest.raises(ValueError, match="Sequence length 65 exceeds max_position_embeddings=64"):
        calls[entry](fixed)
    with pytest.raises(ValueError, match=r"missing \['segment_ids'\]"):
        calls[entry](_dataset({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}))


def test_generator_and_py_dataset_batches_checked_in_the_step(models):
    x = dict(_features(), token_ids=_features()["token_ids"].astype("float32"))

    def generator():
        while True:
            yield x, np.zeros(2, "float32")

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return x, np.zeros(2, "float32")

    model = _make("classifier")
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; the batch has dtype float32"):
        model.predict(generator(), steps=1, verbose=0)
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; the batch has dtype float32"):
        model.fit(Batches(), verbose=0)


def test_good_inputs_still_work_everywhere():
    keras.utils.set_random_seed(0)
    model = BertClassifier(BertEncoder(**TINY, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0), num_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _features()
    y = np.array([0, 1])
    expected = model(x).numpy()
    # int64 NumPy and bool or float masks are fine.
    as_int64 = {k: v.astype("int64") for k, v in x.items()}
    bool_mask = dict(x, padding_mask=x["padding_mask"].astype(bool))
    float_mask = dict(x, padding_mask=x["padding_mask"].astype("float32"))
    for variant in (x, as_int64, bool_mask, float_mask):
        np.testing.assert_allclose(model.predict(variant, verbose=0), expected, atol=1e-5)
        np.testing.assert_allclose(model.predict_on_batch(variant), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict(_dataset(x, with_labels=False), verbose=0), expected, atol=1e-5)
    history = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0).history
    assert set(history) == {"loss", "val_loss"} and len(history["loss"]) == 2
    assert np.isfinite(model.evaluate(_dataset(x, batch=2).map(lambda a, b: (a, tf.cast(b, tf.int32))),
                                      verbose=0))
    assert np.isfinite(model.train_on_batch(x, y)) and np.isfinite(model.test_on_batch(x, y))
    # An empty batch is not an error of the checks (there is nothing to range-check).
    empty = {k: v[:0] for k, v in x.items()}
    assert model(empty).shape == (0, 2)
