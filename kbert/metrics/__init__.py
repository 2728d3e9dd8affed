"""Task metrics: GLUE classification/regression, tagging (word accuracy, entity F1), SQuAD.

Plain functions over NumPy arrays or lists (evaluation runs on the host
after `predict`), plus two Keras metrics for training:
`SparseCategoricalAccuracy` (Keras' metric with a one-op argmax) and
`MaskedSparseCategoricalAccuracy` (with an ignore label).
"""

from kbert.metrics.accuracy import SparseCategoricalAccuracy, argmax_last_axis
from kbert.metrics.classification import (
    accuracy,
    classification_metrics,
    f1,
    matthews_correlation,
    pearson_correlation,
    regression_metrics,
    spearman_correlation,
)
from kbert.metrics.squad import (
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_evaluate,
)
from kbert.metrics.tagging import (
    MaskedSparseCategoricalAccuracy,
    entity_f1,
    token_accuracy,
)

__all__ = [
    "MaskedSparseCategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "accuracy",
    "argmax_last_axis",
    "classification_metrics",
    "entity_f1",
    "exact_match_score",
    "f1",
    "f1_score",
    "matthews_correlation",
    "normalize_answer",
    "pearson_correlation",
    "regression_metrics",
    "spearman_correlation",
    "squad_evaluate",
    "token_accuracy",
]
