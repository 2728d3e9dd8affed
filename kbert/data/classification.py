"""Text classification and regression data: GLUE-style TSV files -> padded batches.

GLUE's TSV layout (Wang et al. 2019; the files of google-research/bert
`run_classifier.py`): a header row naming the columns, then one example per
line, tab-separated, no quoting. Columns are chosen by header name, so SST-2
(`sentence`, `label`), MRPC (`#1 String`, `#2 String`, `Quality`) and
STS-B (`sentence1`, `sentence2`, `score`) all read with the same function.
"""

import csv
import dataclasses
import io

import numpy as np
import tensorflow as tf

from kbert.data.batching import padded_batches_dataset, plan_batches
from kbert.data.files import read_text


@dataclasses.dataclass
class TextExamples:
    """Examples read from one file.

    Attributes:
        path: str, the file they came from.
        texts: list of one or two lists of str (segment A, optional segment B).
        labels: int32 class ids `(num_examples,)`, float32 scores (regression),
            or None for an unlabelled file.
        label_list: list of str class names (id = index), or None for regression.
        lines: list of int, the 1-based file line of each example (for errors).
    """

    path: str
    texts: list
    labels: object
    label_list: object
    lines: list

    def __len__(self):
        return len(self.lines)


def _sorted_labels(values):
    """Class names in a stable order: numerically if all are integers, else as strings."""
    unique = set(values)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _is_fraction(value):
    """True for a label such as "3.8" (a score, not a class name)."""
    try:
        number = float(value)
    except ValueError:
        return False
    return np.isfinite(number) and number != int(number)


def read_tsv(path, text_columns, label_column=None, label_list=None, regression=False):
    """Reads a GLUE-style TSV file with a header row.

    Args:
        path: str, the file (UTF-8).
        text_columns: list of one or two column names (segment A, B).
        label_column: str column name of the label, or None (unlabelled).
        label_list: list of class names to map labels to ids; default: the
            sorted distinct labels of this file (integers sorted as numbers).
            Give the training file's list when reading an evaluation file.
        regression: bool, labels are float scores (no label list).

    Returns:
        `TextExamples`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (each naming the file, line and value) bytes that are not
            UTF-8, a missing column (listing the header), a row with too few or
            too many fields, an empty text or label, a label not in
            `label_list`, a regression label that is not a finite number,
            fractional class labels (scores: use regression), one class only,
            or a file with no examples.
    """
    text_columns = list(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name one or two columns; received {text_columns}.")
    text = read_text(path)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{path} is empty; expected a header row naming the columns.")
    header = rows[0]
    wanted = text_columns + ([label_column] if label_column is not None else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing} in the header {header}.")
    index = [header.index(c) for c in wanted]
    texts = [[] for _ in text_columns]
    raw_labels, lines = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or row == [""]:
            continue
        if len(row) <= max(index):
            raise ValueError(
                f"{path}:{line}: {len(row)} fields, but column {wanted[np.argmax(index)]!r} "
                f"is field {max(index) + 1} of the header: {chr(9).join(row)[:120]!r}."
            )
        if len(row) > len(header):
            # A stray tab inside a text would shift every later column.
            raise ValueError(
                f"{path}:{line}: {len(row)} fields, but the header has {len(header)}: "
                f"{chr(9).join(row)[:120]!r}."
            )
        for column, (name, i) in enumerate(zip(text_columns, index)):
            text = row[i].strip()
            if not text:
                raise ValueError(f"{path}:{line}: empty text in column {name!r}.")
            texts[column].append(text)
        if label_column is not None:
            label = row[index[-1]].strip()
            if not label:
                # Not a class of its own (it would also turn numeric label order into string order).
                raise ValueError(f"{path}:{line}: empty label in column {label_column!r}.")
            raw_labels.append(label)
        lines.append(line)
    if not lines:
        raise ValueError(f"{path} has a header but no examples.")
    labels = None
    if label_column is not None and regression:
        labels = []
        for line, value in zip(lines, raw_labels):
            try:
                score = float(value)
            except ValueError:
                score = None
            if score is None or not np.isfinite(score):
                raise ValueError(
                    f"{path}:{line}: regression label {value!r} in column {label_column!r} "
                    "is not a finite number."
                )
            labels.append(score)
        labels = np.asarray(labels, np.float32)
        label_list = None
    elif label_column is not None:
        if label_list is None:
            label_list = _sorted_labels(raw_labels)
            scores = [v for v in label_list if _is_fraction(v)]
            if scores:
                raise ValueError(
                    f"{path}: column {label_column!r} holds scores such as {scores[0]!r} "
                    f"({len(label_list)} distinct values); for scores use regression "
                    "(--task=regression)."
                )
            if len(label_list) < 2:
                raise ValueError(
                    f"{path}: column {label_column!r} holds one class only ({label_list}); "
                    "classification needs at least two."
                )
        label_list = [str(label) for label in label_list]
        ids = {label: i for i, label in enumerate(label_list)}
        for line, value in zip(lines, raw_labels):
            if value not in ids:
                shown = label_list if len(label_list) <= 20 else label_list[:20] + ["..."]
                raise ValueError(
                    f"{path}:{line}: label {value!r} is not one of the training labels "
                    f"{shown}."
                )
        labels = np.asarray([ids[v] for v in raw_labels], np.int32)
    return TextExamples(path, texts, labels, label_list, lines)


def encode_texts(texts, preprocessor, chunk_size=4096):
    """Tokenizes and packs every example once, unpadded.

    Args:
        texts: list of one or two lists of str (see `TextExamples.texts`).
        preprocessor: `kbert.text.BertTextPreprocessor`; its
            `sequence_length` is the longest packed row.
        chunk_size: int, examples per tokenizer call.

    Returns:
        (features, num_truncated): dict of int32 `tf.RaggedTensor`
        `(num_examples, None)` `token_ids` and `segment_ids`, and the number
        of examples whose word pieces did not fit `sequence_length` and were
        trimmed.
    """
    tokenizer = preprocessor.tokenizer
    budget = preprocessor.sequence_length - len(texts) - 1
    token_ids, segment_ids = [], []
    num_truncated = 0
    for start in range(0, len(texts[0]), chunk_size):
        chunk = tuple(tf.constant(column[start:start + chunk_size]) for column in texts)
        packed = preprocessor(chunk if len(chunk) == 2 else chunk[0])
        lengths = tf.reduce_sum(packed["padding_mask"], axis=1)
        token_ids.append(tf.RaggedTensor.from_tensor(packed["token_ids"], lengths=lengths))
        segment_ids.append(tf.RaggedTensor.from_tensor(packed["segment_ids"], lengths=lengths))
        pieces = sum(tokenizer(segment).row_lengths() for segment in chunk)
        num_truncated += int(tf.reduce_sum(tf.cast(pieces > budget, tf.int32)))
    features = {
        "token_ids": tf.concat(token_ids, axis=0),
        "segment_ids": tf.concat(segment_ids, axis=0),
    }
    return features, num_truncated


def text_dataset(features, labels, batch_size, pad_id=0, seed=0, epoch=0, shuffle=True):
    """One epoch of padded-to-longest, length-bucketed batches (see `kbert.data.batching`).

    Args:
        features: from `encode_texts`.
        labels: `(num_examples,)` int32 ids or float32 scores, or None.
        batch_size: int, examples per batch (the global batch under a strategy).
        pad_id: int, the `[PAD]` id.
        seed, epoch: the batch plan's seed and epoch number.
        shuffle: False for evaluation (file order).

    Returns:
        `tf.data.Dataset` of `({token_ids, segment_ids, padding_mask}, labels)`
        (or of the features dict alone when `labels` is None).
    """
    lengths = features["token_ids"].row_lengths().numpy()
    batches = plan_batches(lengths, batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    return padded_batches_dataset(
        features,
        batches,
        pad_values={"token_ids": pad_id},
        labels=None if labels is None else tf.constant(labels),
    )
