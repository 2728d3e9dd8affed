"""Tagging metrics: word accuracy (UPOS), entity F1 (NER) and a masked Keras accuracy.

`token_accuracy` and `entity_f1` take tags per word (read back from each
word's first piece, `kbert.data.tagging.word_predictions`); a predicted tag
of None (a word cut by truncation) counts as an error. Entities follow
conlleval / seqeval's default mode.
"""

import keras
from keras import ops

from kbert.metrics.accuracy import argmax_last_axis

_SCHEME_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}


def _check_aligned(true_tags, pred_tags):
    if len(true_tags) != len(pred_tags):
        raise ValueError(
            f"true_tags has {len(true_tags)} sentences but pred_tags has {len(pred_tags)}."
        )
    for i, (true, pred) in enumerate(zip(true_tags, pred_tags)):
        if len(true) != len(pred):
            raise ValueError(
                f"Sentence {i}: {len(true)} true tags but {len(pred)} predicted tags."
            )


def token_accuracy(true_tags, pred_tags):
    """Share of words whose predicted tag equals the true tag (e.g. UPOS accuracy).

    Args:
        true_tags, pred_tags: lists (one per sentence) of lists of str, one
            tag per word; a predicted None (no prediction) is an error.

    Returns:
        float in [0, 1].

    Raises:
        ValueError: different numbers of sentences, or of words in a
            sentence (naming its index), or no words at all.
    """
    _check_aligned(true_tags, pred_tags)
    total = sum(len(true) for true in true_tags)
    if total == 0:
        raise ValueError("No words to score.")
    correct = sum(t == p for true, pred in zip(true_tags, pred_tags) for t, p in zip(true, pred))
    return correct / total


def _split_tag(tag, prefixes, scheme, where):
    """("O", "_") for O and None; (prefix, type) for "B-PER" etc., as seqeval splits them."""
    if tag is None or tag == "O":
        return "O", "_"
    prefix, dash, entity_type = tag.partition("-")
    if prefix not in prefixes or len(prefix) != 1 or not dash or not entity_type:
        raise ValueError(
            f"{where}: tag {tag!r} is neither 'O' nor PREFIX-TYPE with PREFIX in "
            f"{list(prefixes)} (scheme {scheme})."
        )
    return prefix, entity_type


def _entities(tags, prefixes, scheme, where):
    """(type, start, end) chunks by conlleval's rules (seqeval 1.2.2 `get_entities`)."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        tag, entity_type = _split_tag(tag, prefixes, scheme, f"{where}, word {i}")
        # A chunk ends after E/S, before B/S/O, or when the type changes.
        end = (
            prev_tag in "ES"
            or (prev_tag in "BI" and tag in "BSO")
            or (prev_tag != "O" and prev_type != entity_type)
        )
        # A chunk starts at B/S, at E/I after E/S/O, or when the type changes.
        start = (
            tag in "BS"
            or (prev_tag in "ESO" and tag in "EI")
            or (tag != "O" and prev_type != entity_type)
        )
        if end:
            chunks.append((prev_type, begin, i - 1))
        if start:
            begin = i
        prev_tag, prev_type = tag, entity_type
    return chunks


def _prf(correct, predicted, true):
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_f1(true_tags, pred_tags, scheme="IOB2"):
    """Entity-level precision, recall and F1 (micro-averaged), as conlleval scores NER.

    Entities are decoded as conlleval and seqeval's default mode
    (`seqeval.metrics.f1_score` without `mode="strict"`, seqeval 1.2.2)
    decode them: an entity starts at B- (or S-), and also at an I- (or E-)
    that follows O, E-/S- or a tag of another type; it ends before O, B-,
    S- or a change of type, and after E-/S-. An entity is correct only if
    both its type and its span match. Entities never cross sentences.

    Args:
        true_tags, pred_tags: lists (one per sentence) of lists of str, one
            tag per word: "O" or "B-TYPE", "I-TYPE" (and "E-", "S-" for
            IOBES); a predicted None (no prediction) is read as "O".
        scheme: "IOB2" (default, CoNLL-2003 as usually distributed),
            "IOB1" or "IOBES": which prefixes are allowed. Decoding is the
            same lenient conlleval rule for all three.

    Returns:
        dict: `precision`, `recall`, `f1` (floats; 0.0 where undefined, as
        seqeval), `num_true`, `num_pred`, `num_correct` (ints) and
        `per_type` {type: {precision, recall, f1, support}}.

    Raises:
        ValueError: unknown scheme, different numbers of sentences or of
            words in a sentence (naming its index), or a tag that is not O
            or PREFIX-TYPE of the scheme (naming sentence, word and tag).
    """
    if scheme not in _SCHEME_PREFIXES:
        raise ValueError(f"scheme must be one of {sorted(_SCHEME_PREFIXES)}; got {scheme!r}.")
    _check_aligned(true_tags, pred_tags)
    prefixes = _SCHEME_PREFIXES[scheme]
    true_set, pred_set = set(), set()
    for i, (true, pred) in enumerate(zip(true_tags, pred_tags)):
        true_set.update((i,) + c for c in _entities(true, prefixes, scheme, f"true sentence {i}"))
        pred_set.update((i,) + c for c in _entities(pred, prefixes, scheme, f"pred sentence {i}"))
    correct = true_set & pred_set
    per_type = {}
    for entity_type in sorted({e[1] for e in true_set | pred_set}):
        counts = [sum(e[1] == entity_type for e in s) for s in (correct, pred_set, true_set)]
        precision, recall, f1 = _prf(*counts)
        per_type[entity_type] = {
            "precision": precision, "recall": recall, "f1": f1, "support": counts[2],
        }
    precision, recall, f1 = _prf(len(correct), len(pred_set), len(true_set))
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "num_true": len(true_set), "num_pred": len(pred_set), "num_correct": len(correct),
        "per_type": per_type,
    }


@keras.saving.register_keras_serializable(package="kbert")
class MaskedSparseCategoricalAccuracy(keras.metrics.Metric):
    """Accuracy of per-token logits over the positions whose label is not `ignore_label`.

    For taggers trained with first-piece labels (Devlin et al. 2019, section
    5.3): later word pieces, `[CLS]`, `[SEP]` and padding carry
    `ignore_label` and are not counted, so the value is word accuracy on the
    words in the batch.

    Args:
        ignore_label: int label to skip (default -100, as
            `kbert.data.tagging.IGNORE_LABEL`).
        name: str metric name.
        dtype: dtype of the accumulators (default float32).

    Call arguments (`update_state`):
        y_true: int labels `(batch_size, length)`.
        y_pred: logits or probabilities `(batch_size, length, num_classes)`.
        sample_weight: optional weights broadcastable to `(batch_size,
            length)` (e.g. `(batch_size, 1)`).

    Returns (`result`): float32 scalar, correct / counted positions (0 if
    none were counted).
    """

    def __init__(self, ignore_label=-100, name="masked_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.ignore_label = int(ignore_label)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        predicted = argmax_last_axis(y_pred)
        weight = ops.cast(ops.not_equal(y_true, self.ignore_label), self.dtype)
        if sample_weight is not None:
            weight = weight * ops.cast(sample_weight, self.dtype)
        hits = ops.cast(ops.equal(predicted, y_true), self.dtype) * weight
        self.correct.assign_add(ops.sum(hits))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "ignore_label": self.ignore_label}
