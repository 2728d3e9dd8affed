"""SQuAD answer post-processing: start/end logits -> answer texts and character offsets.

Holds `postprocess_squad`, the counterpart of google-research/bert
`run_squad.py` `write_predictions` (n-best start/end candidates per window, the
max-context rule, the SQuAD v2.0 null-score threshold), reading answers back
from the windows of `kbert.data.squad.create_squad_features`. Re-exported by
`kbert.data.squad`.
"""

import collections

import numpy as np


def postprocess_squad(examples, features, start_logits, end_logits, n_best_size=20,
                      max_answer_length=30, version_2_with_negative=False,
                      null_score_diff_threshold=0.0):
    """Turns start/end logits into answers (run_squad `write_predictions`).

    For each example, the `n_best_size` highest start and end logits of each
    of its windows are paired; a pair is valid when both positions are context
    pieces, `start <= end`, `end - start + 1 <= max_answer_length` and the
    start piece has its maximum context in that window. The best valid pair by
    `start_logit + end_logit` wins; its text is the original context from the
    start piece's first character to the end piece's last (original casing,
    accents and punctuation; whitespace inside the span kept as in the context).
    With `version_2_with_negative`, the null score is the lowest
    `start_logits[0] + end_logits[0]` over the example's windows, and the
    prediction is "" when `null_score - best_score > null_score_diff_threshold`.

    Args:
        examples: list of `SquadExample` given to `create_squad_features`.
        features: the `SquadFeatures` (or list of `SquadWindow`) built from them.
        start_logits, end_logits: one float array per window, each at least
            as long as the window (positions past it, padding, are ignored).
        n_best_size: int, candidates per window for start and for end.
        max_answer_length: int, longest answer in pieces.
        version_2_with_negative: bool, allow the empty (no-answer) prediction.
        null_score_diff_threshold: float.

    Returns:
        dict qas_id -> {"text": str, "start_char": int or None, "end_char": int
        or None (exclusive; `context_text[start_char:end_char] == text`),
        "score": float}; v2.0 adds "null_score_diff". No valid pair (and no
        v2.0 null) gives text "" and score -inf.

    Raises:
        ValueError: logits count differs from the windows, or a logits array is
            shorter than its window.
    """
    windows = list(features)
    if len(start_logits) != len(windows) or len(end_logits) != len(windows):
        raise ValueError(f"Got {len(start_logits)} start and {len(end_logits)} end logits "
                         f"arrays for {len(windows)} windows.")
    by_example = collections.defaultdict(list)
    for i, window in enumerate(windows):
        by_example[window.example_index].append(i)
    predictions = {}
    for example_index, example in enumerate(examples):
        best, null_score = (-np.inf, None, 0, 0), None
        for i in by_example[example_index]:
            window = windows[i]
            size = len(window.token_ids)
            starts = np.asarray(start_logits[i], np.float64).reshape(-1)
            ends = np.asarray(end_logits[i], np.float64).reshape(-1)
            if len(starts) < size or len(ends) < size:
                raise ValueError(f"Window {i} has {size} positions but {len(starts)} start and "
                                 f"{len(ends)} end logits.")
            starts, ends = starts[:size], ends[:size]
            if version_2_with_negative and (null_score is None or starts[0] + ends[0] < null_score):
                null_score = starts[0] + ends[0]
            top_starts = np.argsort(-starts, kind="stable")[:n_best_size, None]
            top_ends = np.argsort(-ends, kind="stable")[None, :n_best_size]
            valid = (window.token_is_max_context[top_starts]
                     & (window.token_to_orig_map[top_ends] >= 0)
                     & (top_starts <= top_ends) & (top_ends - top_starts < max_answer_length))
            scores = np.where(valid, starts[top_starts] + ends[top_ends], -np.inf)
            s, e = np.unravel_index(np.argmax(scores), scores.shape)  # first best, as run_squad
            if scores[s, e] > best[0]:
                best = (scores[s, e], window, top_starts[s, 0], top_ends[0, e])
        score, window, s, e = best
        prediction = {"text": "", "start_char": None, "end_char": None, "score": float(score)}
        if window is not None:
            begin, end = int(window.token_char_spans[s, 0]), int(window.token_char_spans[e, 1])
            prediction.update(text=example.context_text[begin:end], start_char=begin,
                              end_char=end)
        if null_score is not None:
            prediction["null_score_diff"] = float(null_score - score)
            if null_score - score > null_score_diff_threshold:
                prediction.update(text="", start_char=None, end_char=None,
                                  score=float(null_score))
        predictions[example.qas_id] = prediction
    return predictions
