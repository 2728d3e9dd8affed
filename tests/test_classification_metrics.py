"""GLUE metrics against scikit-learn and scipy.stats, and hand-computed cases; the train-step
accuracy metric against Keras' and NumPy."""

import math

import numpy as np
import pytest

from kbert.metrics import (
    SparseCategoricalAccuracy,
    accuracy,
    f1,
    matthews_correlation,
    pearson_correlation,
    spearman_correlation,
)

# --------------------------------------------------------------------------- metrics


def _random_classes(seed, n, num_classes, agree=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    predictions = np.where(rng.random(n) < agree, labels, rng.integers(0, num_classes, n))
    return labels, predictions


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_scikit_learn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels, predictions = _random_classes(seed, 200 + 37 * seed, 2)
    assert accuracy(labels, predictions) == pytest.approx(
        sklearn_metrics.accuracy_score(labels, predictions), abs=1e-12)
    assert f1(labels, predictions) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions), abs=1e-12)
    assert f1(labels, predictions, positive_label=0) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions, pos_label=0), abs=1e-12)
    assert matthews_correlation(labels, predictions) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    for num_classes in (3, 5):
        labels, predictions = _random_classes(seed, 300, num_classes, agree=0.4)
        assert matthews_correlation(labels, predictions) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    # String class names and a class that is predicted but never true.
    labels = np.array(["a", "b", "b", "c", "a", "b"])
    predictions = np.array(["a", "b", "d", "c", "b", "b"])
    assert matthews_correlation(labels, predictions) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)


def test_classification_metrics_hand_computed_and_degenerate():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels = [1, 1, 0, 0, 1, 0]
    predictions = [1, 0, 0, 1, 1, 0]
    # tp = 2, fp = 1, fn = 1, tn = 2: F1 = 4 / 6, MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    assert accuracy(labels, predictions) == pytest.approx(4 / 6)
    assert f1(labels, predictions) == pytest.approx(2 / 3)
    assert matthews_correlation(labels, predictions) == pytest.approx(1 / 3)
    for constant in ([1] * 6, [0] * 6):
        assert matthews_correlation(labels, constant) == 0.0
        assert matthews_correlation(constant, labels) == 0.0
        assert sklearn_metrics.matthews_corrcoef(labels, constant) == 0.0
    assert matthews_correlation([2, 2, 2], [2, 2, 2]) == 0.0  # one class: undefined -> 0
    assert matthews_correlation(labels, labels) == pytest.approx(1.0)
    assert matthews_correlation(labels, [1 - p for p in labels]) == pytest.approx(-1.0)
    # No positive at all: sklearn's zero_division=0 value.
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0 == sklearn_metrics.f1_score([0, 0, 0], [0, 0, 0],
                                                                       zero_division=0)
    with pytest.raises(ValueError, match=r"differ in shape: \(3,\) vs \(2,\)"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        f1([], [])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, 150)
    predictions = labels + rng.normal(0, 1.5, 150)
    assert pearson_correlation(labels, predictions) == pytest.approx(
        stats.pearsonr(labels, predictions)[0], abs=1e-12)
    assert spearman_correlation(labels, predictions) == pytest.approx(
        stats.spearmanr(labels, predictions)[0], abs=1e-12)
    # STS-B-like scores with many ties (rounded to 0.2) on both sides.
    tied_labels = np.round(labels * 5) / 5
    tied_predictions = np.round(predictions).astype(np.float32)
    assert len(np.unique(tied_predictions)) < 20
    assert spearman_correlation(tied_labels, tied_predictions) == pytest.approx(
        stats.spearmanr(tied_labels, tied_predictions)[0], abs=1e-7)
    assert pearson_correlation(tied_labels, tied_predictions) == pytest.approx(
        stats.pearsonr(tied_labels, tied_predictions)[0], abs=1e-7)


def test_correlations_hand_computed_and_degenerate():
    # Ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [10, 30, 20, 40] [1, 3, 2, 4].
    x, y = np.array([1.0, 2.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0, 40.0])
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    assert spearman_correlation(x, y) == pytest.approx((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))
    assert pearson_correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson_correlation([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman_correlation([5, 5, 5], [1, 2, 3]))



def test_sparse_categorical_accuracy_matches_keras_and_numpy():
    import keras

    rng = np.random.default_rng(0)
    # Masked-LM shaped: (batch, predictions, vocab) logits, (batch, predictions) labels and
    # weights (0 on padded predictions), two updates; ties broken toward the first index.
    logits = [rng.normal(size=(4, 5, 50)).astype("float32") for _ in range(2)]
    logits[1][0, 0, [3, 9]] = 99.0
    labels = [np.argmax(x, -1) * (rng.random((4, 5)) < 0.5) for x in logits]
    weights = [(rng.random((4, 5)) < 0.8).astype("float32") for _ in range(2)]
    ours, theirs = SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy()
    for x, y, w in zip(logits, labels, weights):
        ours.update_state(y, x, sample_weight=w)
        theirs.update_state(y, x, sample_weight=w)
    hits = np.concatenate([(np.argmax(x, -1) == y).ravel() for x, y in zip(logits, labels)])
    expected = np.sum(hits * np.concatenate([w.ravel() for w in weights])) / sum(w.sum() for w in weights)
    assert 0.3 < expected < 0.7
    np.testing.assert_allclose(float(ours.result()), expected, rtol=1e-6)
    np.testing.assert_allclose(float(ours.result()), float(theirs.result()), rtol=1e-6)
    # (n, 1) labels as Keras takes them; the config round-trips.
    column = SparseCategoricalAccuracy.from_config(SparseCategoricalAccuracy(name="acc").get_config())
    column.update_state(np.array([[2], [0]]), np.eye(3, dtype="float32")[[2, 1]])
    assert column.name == "acc" and float(column.result()) == 0.5
    # Float labels compare as floats (a non-integral one matches nothing), as in Keras.
    floats = np.array([2.0, 2.7, -0.5], "float32")
    predicted = np.eye(3, dtype="float32")[[2, 2, 0]]
    for metric in (SparseCategoricalAccuracy(), keras.metrics.SparseCategoricalAccuracy()):
        metric.update_state(floats, predicted)
        assert float(metric.result()) == pytest.approx(1 / 3)
