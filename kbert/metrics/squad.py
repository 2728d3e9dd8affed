"""SQuAD exact match and F1, as defined by the official evaluation scripts.

References: `evaluate-v1.1.py` and `evaluate-v2.0.py` from the SQuAD site
(Rajpurkar et al. 2016, 2018). Answers are normalised (lower-case, ASCII
punctuation and the articles a/an/the removed, whitespace collapsed), compared
as strings (exact match) or as bags of tokens (F1), and each question scores
its best reference. F1 uses the v2.0 rule for empty answers (F1 = EM), which
v1.1 data never reaches since its references are never empty.
"""

import collections
import json
import os
import re
import string
import warnings

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text):
    """Lower-cases, drops ASCII punctuation and articles, collapses whitespace.

    Official `normalize_answer`, same order: lower, remove punctuation, remove
    articles (whole words a/an/the), fix whitespace.

    Args:
        text: str.

    Returns:
        str.
    """
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction, ground_truth):
    """1.0 if the normalised strings are equal, else 0.0 (official `compute_exact`)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction, ground_truth):
    """Token-level F1 of the normalised answers (official `compute_f1`).

    Tokens are the whitespace-split normalised answers; overlap counts
    repeated tokens at most as often as in both (a bag intersection). If
    either answer normalises to empty, F1 is their exact match (v2.0 rule).

    Args:
        prediction, ground_truth: str.

    Returns:
        float in [0, 1].
    """
    predicted = normalize_answer(prediction).split()
    truth = normalize_answer(ground_truth).split()
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def _references(examples_or_dataset):
    """qas_id -> list of reference answer texts, from any accepted input."""
    source = examples_or_dataset
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            source = json.load(f)
    if isinstance(source, dict):
        source = source["data"]
    references = {}
    for item in source:
        if hasattr(item, "qas_id"):  # a SquadExample
            references[item.qas_id] = [a["text"] for a in item.answers]
            continue
        for paragraph in item["paragraphs"]:  # an article of the official JSON
            for qa in paragraph["qas"]:
                references[qa["id"]] = [a["text"] for a in qa["answers"]]
    return references


def squad_evaluate(examples_or_dataset, predictions):
    """Official SQuAD v1.1 / v2.0 exact match and F1 over a set of questions.

    Each question scores the maximum over its reference answers; references
    that normalise to empty are dropped and a question left with none (v2.0
    unanswerable) has the single reference "" (so only "" scores). A question
    without a prediction scores 0 and a `UserWarning` lists (up to 10 of) the
    missing ids; predictions for unknown ids are ignored.

    Args:
        examples_or_dataset: list of `kbert.data.squad.SquadExample`, the
            official JSON as a dict (or its `data` list), or a path to it.
        predictions: dict qas_id -> str, or -> dict with a "text" key (the
            output of `kbert.data.squad.postprocess_squad`).

    Returns:
        dict: "exact_match" and "f1" (floats, percent 0-100), "count" (int,
        questions scored), "missing" (int, questions without prediction).

    Raises:
        ValueError: no questions.
    """
    references = _references(examples_or_dataset)
    if not references:
        raise ValueError("No questions to evaluate.")
    exact = f1 = 0.0
    missing = []
    for qas_id, answers in references.items():
        if qas_id not in predictions:
            missing.append(qas_id)
            continue
        prediction = predictions[qas_id]
        if isinstance(prediction, dict):
            prediction = prediction["text"]
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact += max(exact_match_score(prediction, a) for a in answers)
        f1 += max(f1_score(prediction, a) for a in answers)
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(references)} questions have no prediction and score 0: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}",
            stacklevel=2,
        )
    count = len(references)
    return {"exact_match": 100.0 * exact / count, "f1": 100.0 * f1 / count, "count": count,
            "missing": len(missing)}
