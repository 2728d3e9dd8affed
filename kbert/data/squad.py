"""SQuAD v1.1 / v2.0 extractive question answering: examples, windows, answers.

Follows google-research/bert `run_squad.py` (`read_squad_examples`,
`convert_examples_to_features`, `_improve_answer_span`, `_check_is_max_context`,
`write_predictions`). Tokenization is the in-graph `kbert.text.BertTokenizer`,
called on all words of all contexts in a few batched calls. Instead of
`get_final_text`'s alignment heuristic, every WordPiece keeps its character
span in the context (a Python replay of BERT's BasicTokenizer), so an answer is
the exact sub-string of the context, with its offsets, also where the
heuristic gives up (NFD accents, `[UNK]` pieces, a repeated sub-string).
Those span helpers live in `kbert.data.squad_tokenization`; `postprocess_squad`
lives in `kbert.data.squad_postprocessing` and is re-exported here.
"""

import bisect
import dataclasses
import json
import re

import numpy as np
import tensorflow as tf

from kbert.data.files import read_text

# Re-exported: `from kbert.data.squad import postprocess_squad` keeps working.
from kbert.data.squad_postprocessing import postprocess_squad  # noqa: F401
from kbert.data.squad_tokenization import _piece_char_spans, _tokenize

_INPUT_NAMES = ("token_ids", "segment_ids", "padding_mask")
_LABEL_NAMES = ("start_positions", "end_positions")


@dataclasses.dataclass
class SquadExample:
    """One question on one context (run_squad `SquadExample`).

    Attributes:
        qas_id: str, the question id.
        question_text: str.
        context_text: str, the paragraph exactly as in the file.
        doc_tokens: list of str, the context split on whitespace (words).
        word_char_spans: list of `(start, end)` character offsets of each word
            in `context_text` (end exclusive); run_squad's `char_to_word_offset`
            inverted.
        answers: list of dicts `{"text", "answer_start"}`, all references.
        start_position, end_position: int word indexes (into `doc_tokens`) of
            the first answer, or None when there is none (impossible).
        orig_answer_text: str, the first answer ("" if impossible).
        is_impossible: bool, SQuAD v2.0 unanswerable question.
    """

    qas_id: str
    question_text: str
    context_text: str
    doc_tokens: list
    word_char_spans: list
    answers: list
    start_position: int = None
    end_position: int = None
    orig_answer_text: str = ""
    is_impossible: bool = False


def _split_words(context):
    """run_squad's whitespace split: words and their `(start, end)` offsets."""
    matches = list(re.finditer(r"[^ \t\r\n\u202f]+", context))
    return [m.group() for m in matches], [m.span() for m in matches]


def read_squad_examples(path, version_2_with_negative=False):
    """Reads an official SQuAD JSON file (`data` -> `paragraphs` -> `context`, `qas`).

    Every answer is checked against the context: `context[answer_start:
    answer_start + len(text)] == text`. The word positions come from the first
    answer, its surrounding whitespace excluded. v1.1 questions must have at
    least one answer; with `version_2_with_negative`, `is_impossible` (missing:
    False) questions may have none.

    Args:
        path: str or path-like, the JSON file.
        version_2_with_negative: bool, read SQuAD v2.0 `is_impossible`.

    Returns:
        list of `SquadExample`, in file order.

    Raises:
        ValueError: bad layout, missing key, empty or duplicate question, no
            answer, or an answer not found at its `answer_start`; the message
            names the file and the question id.
    """
    text = read_text(path)
    try:
        paragraphs = [p for article in json.loads(text)["data"] for p in article["paragraphs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not SQuAD JSON (data -> paragraphs): {type(e).__name__}: {str(e)[:200]}"
        ) from None
    if not paragraphs:
        raise ValueError(f"{path} holds no paragraphs (data -> paragraphs is empty).")
    examples, seen = [], set()
    for paragraph in paragraphs:
        if not isinstance(paragraph.get("context"), str) or "qas" not in paragraph:
            raise ValueError(f"{path}: a paragraph lacks 'context' or 'qas': "
                             f"{str(paragraph)[:200]}.")
        context = paragraph["context"]
        words, spans = _split_words(context)
        starts = [s for s, _ in spans]
        for qa in paragraph["qas"]:
            qas_id = qa.get("id")
            where = f"{path}: question {qas_id!r}"
            missing = [k for k in ("id", "question", "answers") if k not in qa]
            if missing:
                raise ValueError(f"{where} lacks the key(s) {missing}.")
            if qas_id in seen:
                raise ValueError(f"{where} appears twice.")
            seen.add(qas_id)
            if not isinstance(qa["question"], str) or not qa["question"].strip():
                raise ValueError(f"{where} has an empty question: {qa['question']!r}.")
            impossible = bool(qa.get("is_impossible", False)) and version_2_with_negative
            answers = qa["answers"]
            for answer in answers:
                text, start = answer.get("text"), answer.get("answer_start")
                if not isinstance(text, str) or not text.strip() or not isinstance(start, int):
                    raise ValueError(f"{where} has a malformed answer {answer!r}.")
                if context[start:start + len(text)] != text or start < 0:
                    found = context[max(start, 0):max(start, 0) + len(text)]
                    raise ValueError(f"{where}: answer text {text!r} is not at answer_start "
                                     f"{start} of the context (found {found!r}).")
            example = SquadExample(qas_id, qa["question"], context, words, spans,
                                   [dict(a) for a in answers], is_impossible=impossible)
            if not impossible:
                if not answers:
                    raise ValueError(f"{where} has no answer (for SQuAD v2.0 unanswerable "
                                     "questions pass version_2_with_negative=True).")
                text, start = answers[0]["text"], answers[0]["answer_start"]
                first = start + len(text) - len(text.lstrip())
                last = start + len(text.rstrip()) - 1
                example.start_position = bisect.bisect_right(starts, first) - 1
                example.end_position = bisect.bisect_right(starts, last) - 1
                example.orig_answer_text = text
            examples.append(example)
    return examples


@dataclasses.dataclass
class SquadWindow:
    """One packed window of one example (run_squad `InputFeatures`).

    Sequence fields are unpadded, of the window's real length `L`:
    `[CLS] question [SEP] context-window [SEP]`.

    Attributes:
        example_index: int, index of the example in the list given.
        token_ids, segment_ids, padding_mask: int32 arrays `(L,)`; segment 0
            for `[CLS]`, the question and the first `[SEP]`, 1 after.
        token_to_orig_map: int32 array `(L,)`, word index (into
            `doc_tokens`) of each context piece; -1 elsewhere.
        token_is_max_context: bool array `(L,)`, the piece has its maximum
            context in this window (`_check_is_max_context`); False off-context.
        token_char_spans: int32 array `(L, 2)`, `[start, end)` character span
            of each context piece in `context_text`; -1 elsewhere.
        start_positions, end_positions: int answer piece positions in this
            window (0, the `[CLS]`, if outside or impossible); None when the
            windows were built with `is_training=False`.
    """

    example_index: int
    token_ids: np.ndarray
    segment_ids: np.ndarray
    padding_mask: np.ndarray
    token_to_orig_map: np.ndarray
    token_is_max_context: np.ndarray
    token_char_spans: np.ndarray
    start_positions: int = None
    end_positions: int = None


class SquadFeatures(list):
    """The windows of a list of examples: a list of `SquadWindow`.

    Args:
        windows: iterable of `SquadWindow`.
        pad_id: int, the `[PAD]` id used by `to_dataset`.
    """

    def __init__(self, windows=(), pad_id=0):
        super().__init__(windows)
        self.pad_id = int(pad_id)

    def to_dataset(self, batch_size, shuffle=False, seed=None, drop_remainder=False):
        """A `tf.data.Dataset` of batches padded to the longest window of each batch.

        Elements are `({token_ids, segment_ids, padding_mask}, {start_positions,
        end_positions})`: int32 `(batch_size, longest)` inputs (`token_ids`
        padded with `pad_id`, the others with 0) and int32 `(batch_size,)`
        labels; without labels (`is_training=False`) the inputs dict alone.
        Order is the windows' order unless `shuffle` (reshuffled every epoch,
        reproducibly for a given `seed`).

        Raises:
            ValueError: no windows, or `batch_size` < 1.
        """
        if not self or batch_size < 1:
            raise ValueError(f"Need windows and batch_size >= 1; got {len(self)} windows, "
                             f"batch_size {batch_size}.")
        lengths = np.array([len(w.token_ids) for w in self], np.int32)
        rows = {name: np.zeros((len(self), lengths.max()), np.int32) for name in _INPUT_NAMES}
        for i, window in enumerate(self):
            for name in _INPUT_NAMES:
                rows[name][i, :lengths[i]] = getattr(window, name)
        labels = {}
        if all(w.start_positions is not None for w in self):
            labels = {name: np.array([getattr(w, name) for w in self], np.int32)
                      for name in _LABEL_NAMES}
        pads = {name: tf.constant(self.pad_id if name == "token_ids" else 0, tf.int32)
                for name in _INPUT_NAMES}

        def trim(length, inputs, labels):  # back to the window's own length
            inputs = {name: value[:length] for name, value in inputs.items()}
            return (inputs, labels) if labels else inputs

        dataset = tf.data.Dataset.from_tensor_slices((lengths, rows, labels)).map(trim)
        if labels:
            pads = (pads, {name: tf.constant(0, tf.int32) for name in _LABEL_NAMES})
        if shuffle:
            dataset = dataset.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        return dataset.padded_batch(batch_size, padding_values=pads, drop_remainder=drop_remainder)


def _window_starts(num_pieces, window_length, doc_stride):
    """run_squad's sliding windows: `(start, length)` pairs covering every piece."""
    spans, start = [], 0
    while True:
        length = min(window_length, num_pieces - start)
        spans.append((start, length))
        if start + length >= num_pieces:
            return spans
        start += min(doc_stride, length)  # never past the window: no piece skipped


def _max_context_windows(spans, num_pieces):
    """For each piece, the window where min(left, right context) + 0.01 * length is largest."""
    best_score = np.full(num_pieces, -np.inf)
    best = np.zeros(num_pieces, np.int64)
    for index, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[pos]  # strict: the first window wins ties
        best_score[pos[better]] = score[better]
        best[pos[better]] = index
    return best


def create_squad_features(examples, tokenizer, sequence_length=384, doc_stride=128,
                          max_query_length=64, is_training=False):
    """Packs examples into windows (run_squad `convert_examples_to_features`).

    Each window is `[CLS] question [SEP] context-window [SEP]`. The question
    keeps its first `max_query_length` pieces; the context gets the remaining
    `sequence_length - len(question) - 3` pieces per window. `doc_stride` is the
    offset between the starts of consecutive windows; a stride larger than the
    window is clamped to the window length, so no context piece is ever
    skipped. A context with no pieces gives one window with an empty context.

    Training labels are the answer's first/last piece positions in the
    window, tightened to the pieces that spell the tokenized answer
    (`_improve_answer_span`), or 0 (`[CLS]`) when the answer is not wholly
    inside the window or the question is impossible.

    Args:
        examples: list of `SquadExample`.
        tokenizer: `kbert.text.BertTokenizer`.
        sequence_length: int, maximum window length in pieces.
        doc_stride: int >= 1, pieces between window starts.
        max_query_length: int >= 1, question pieces kept.
        is_training: bool, compute `start_positions`/`end_positions`.

    Returns:
        `SquadFeatures`, windows in example order (windows of one example in
        context order).

    Raises:
        ValueError: a non-positive argument, a question leaving no room for
            context (names `sequence_length` and the question's length), or
            with `is_training` an answerable example without positions.
    """
    if min(sequence_length, doc_stride, max_query_length) < 1:
        raise ValueError(f"sequence_length ({sequence_length}), doc_stride ({doc_stride}) and "
                         f"max_query_length ({max_query_length}) must be positive.")
    special = tokenizer.special_token_ids
    contexts = {ex.context_text: ex for ex in examples}  # tokenize each paragraph once
    words = [w for ex in contexts.values() for w in ex.doc_tokens]
    answers = [ex.orig_answer_text for ex in examples] if is_training else []
    ids = _tokenize(tokenizer, words + [ex.question_text for ex in examples] + answers)
    question_ids = ids[len(words):len(words) + len(examples)]
    answer_ids = ids[len(words) + len(examples):]
    docs, cursor = {}, 0  # context_text -> (pieces, piece_to_word, word_to_piece, char_spans)
    for text, example in contexts.items():
        pieces, to_word, to_piece, spans = [], [], [], []
        for w, (word, (offset, _)) in enumerate(zip(example.doc_tokens, example.word_char_spans)):
            to_piece.append(len(pieces))
            pieces.extend(ids[cursor + w])
            to_word.extend([w] * len(ids[cursor + w]))
            strings = [tokenizer.vocabulary[i] for i in ids[cursor + w]]
            spans.extend((offset + a, offset + b)
                         for a, b in _piece_char_spans(word, strings, tokenizer.lowercase))
        cursor += len(example.doc_tokens)
        docs[text] = (pieces, np.array(to_word, np.int32), to_piece + [len(pieces)],
                      np.array(spans, np.int32).reshape(-1, 2))

    windows = []
    for index, example in enumerate(examples):
        pieces, to_word, to_piece, char_spans = docs[example.context_text]
        query = question_ids[index][:max_query_length]
        room = sequence_length - len(query) - 3
        if room < 1:
            raise ValueError(
                f"sequence_length {sequence_length} leaves no room for context after question "
                f"{example.qas_id!r} of {len(query)} pieces (max_query_length "
                f"{max_query_length}) + 3 special tokens; need sequence_length >= "
                f"{len(query) + 4}.")
        answer_span = None
        if is_training and not example.is_impossible:
            if example.start_position is None or example.end_position is None:
                raise ValueError(f"is_training needs answer positions; question "
                                 f"{example.qas_id!r} has none and is not impossible.")
            first = to_piece[example.start_position]
            last = to_piece[example.end_position + 1] - 1  # to_piece ends with len(pieces)
            if first <= last:  # else the answer words have no pieces: label [CLS]
                answer_span = _improve_answer_span(pieces, first, last, answer_ids[index])
        spans = _window_starts(len(pieces), room, doc_stride)
        best = _max_context_windows(spans, len(pieces))
        offset = len(query) + 2
        for window_index, (start, length) in enumerate(spans):
            total = offset + length + 1
            window = SquadWindow(
                example_index=index,
                token_ids=np.array([special["cls"], *query, special["sep"],
                                    *pieces[start:start + length], special["sep"]], np.int32),
                segment_ids=np.array([0] * offset + [1] * (length + 1), np.int32),
                padding_mask=np.ones(total, np.int32),
                token_to_orig_map=np.full(total, -1, np.int32),
                token_is_max_context=np.zeros(total, bool),
                token_char_spans=np.full((total, 2), -1, np.int32),
            )
            context = slice(offset, offset + length)
            window.token_to_orig_map[context] = to_word[start:start + length]
            window.token_is_max_context[context] = best[start:start + length] == window_index
            window.token_char_spans[context] = char_spans[start:start + length]
            if is_training:
                window.start_positions = window.end_positions = 0
                if answer_span and start <= answer_span[0] and answer_span[1] < start + length:
                    window.start_positions = answer_span[0] - start + offset
                    window.end_positions = answer_span[1] - start + offset
            windows.append(window)
    return SquadFeatures(windows, pad_id=special["pad"])


def _improve_answer_span(pieces, first, last, answer_pieces):
    """run_squad `_improve_answer_span`: the tightest `[first, last]` sub-span
    whose pieces equal the tokenized answer, else the word-level span."""
    for start in range(first, last + 1):
        for end in range(last, start - 1, -1):
            if pieces[start:end + 1] == answer_pieces:
                return start, end
    return first, last

