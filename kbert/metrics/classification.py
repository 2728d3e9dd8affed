"""GLUE metrics for classification and regression, as plain NumPy functions.

Definitions follow the GLUE benchmark (Wang et al. 2019, table 1): accuracy,
F1 of the positive class (MRPC, QQP), Matthews correlation (CoLA), Pearson
and Spearman correlation (STS-B).
"""

import numpy as np


def _labels_pair(labels, predictions):
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions differ in shape: {labels.shape} vs {predictions.shape}."
        )
    if labels.size == 0:
        raise ValueError("labels and predictions are empty.")
    return labels, predictions


def accuracy(labels, predictions):
    """Share of `predictions` equal to `labels` (1-D int arrays of class ids).

    Raises:
        ValueError: different shapes, or empty inputs.
    """
    labels, predictions = _labels_pair(labels, predictions)
    return float(np.mean(labels == predictions))


def f1(labels, predictions, positive_label=1):
    """F1 of class `positive_label`: 2 * precision * recall / (precision + recall).

    0.0 when the class is never predicted and never true (no true positives).

    Raises:
        ValueError: different shapes, or empty inputs.
    """
    labels, predictions = _labels_pair(labels, predictions)
    true_positive = np.sum((predictions == positive_label) & (labels == positive_label))
    predicted = np.sum(predictions == positive_label)
    actual = np.sum(labels == positive_label)
    if true_positive == 0:
        return 0.0
    return float(2 * true_positive / (predicted + actual))


def matthews_correlation(labels, predictions):
    """Matthews correlation coefficient, multi-class (Gorodkin 2004; = MCC for two classes).

    0.0 when it is undefined (all predictions or all labels in one class),
    as scikit-learn's `matthews_corrcoef` returns.

    Raises:
        ValueError: different shapes, or empty inputs.
    """
    labels, predictions = _labels_pair(labels, predictions)
    classes = np.union1d(labels, predictions)
    index = {c: i for i, c in enumerate(classes.tolist())}
    confusion = np.zeros((len(classes), len(classes)), np.float64)
    for t, p in zip(labels.tolist(), predictions.tolist()):
        confusion[index[t], index[p]] += 1
    n = confusion.sum()
    correct = np.trace(confusion)
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    covariance = correct * n - true_counts @ predicted_counts
    denominator = np.sqrt(
        (n * n - predicted_counts @ predicted_counts) * (n * n - true_counts @ true_counts)
    )
    return float(covariance / denominator) if denominator else 0.0


def pearson_correlation(labels, predictions):
    """Pearson's r of two 1-D float arrays (NaN if either is constant).

    Raises:
        ValueError: different shapes, or empty inputs.
    """
    labels, predictions = _labels_pair(labels, predictions)
    x = labels.astype(np.float64) - labels.mean()
    y = predictions.astype(np.float64) - predictions.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else float("nan")


def _average_ranks(values):
    """Ranks 1..n, ties sharing the mean of their ranks (as scipy's `rankdata`)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_correlation(labels, predictions):
    """Spearman's rho: Pearson's r of the average ranks.

    Raises:
        ValueError: different shapes, or empty inputs.
    """
    labels, predictions = _labels_pair(labels, predictions)
    return pearson_correlation(_average_ranks(labels), _average_ranks(predictions))


def classification_metrics(labels, predictions, num_classes):
    """`accuracy`, `matthews_correlation` and, for two classes, `f1` (class 1)."""
    result = {
        "accuracy": accuracy(labels, predictions),
        "matthews_correlation": matthews_correlation(labels, predictions),
    }
    if num_classes == 2:
        result["f1"] = f1(labels, predictions)
    return result


def regression_metrics(labels, predictions):
    """`pearson`, `spearman` and their mean `pearson_spearman` (GLUE's STS-B score)."""
    pearson = pearson_correlation(labels, predictions)
    spearman = spearman_correlation(labels, predictions)
    return {"pearson": pearson, "spearman": spearman, "pearson_spearman": (pearson + spearman) / 2}
