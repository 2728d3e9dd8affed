"""CoNLL file readers for tagging: CoNLL-U and CoNLL-2003-style column files.

Holds `TaggedSentence` (one sentence of words and their tags) and the readers
`read_conllu` (CoNLL-U, universaldependencies.org/format.html: 10
tab-separated fields, multi-word tokens and empty nodes skipped) and
`read_conll` (CoNLL-2003 shared task layout: whitespace-separated columns,
`-DOCSTART-` lines skipped). Encoding for BERT lives in `kbert.data.tagging`,
which re-exports these names.
"""

import dataclasses
import io
import re

from kbert.data.files import read_text

_CONLLU_TAG_COLUMNS = {"upos": 3, "xpos": 4}


@dataclasses.dataclass
class TaggedSentence:
    """One sentence of words and their tags.

    Attributes:
        words: list of str, the word forms.
        tags: list of str, one tag per word.
        source: str, "path:line" of the sentence's first line (for messages).
        lines: list of int, the file line of each word (may be empty).
    """

    words: list
    tags: list
    source: str = ""
    lines: list = dataclasses.field(default_factory=list)


def _check_tag(tag, label_index, where):
    if label_index is not None and tag not in label_index:
        raise ValueError(f"{where}: unknown tag {tag!r}; known tags: {list(label_index)[:30]}.")


def _finish(path, sentences):
    if not sentences:
        raise ValueError(f"{path}: no sentences found (empty file or wrong format).")
    return sentences


def read_conllu(path, tag_field="upos", label_list=None):
    """Reads words and tags from a CoNLL-U file (universaldependencies.org/format.html).

    Lines hold 10 tab-separated fields; `#` lines are comments and a blank
    line ends a sentence. Multi-word token lines (ID `3-4`, e.g. "don't") are
    skipped: the syntactic words that follow them ("do", "n't") carry the
    tags. Empty nodes (ID `8.1`) are skipped.

    Args:
        path: str or path-like, a UTF-8 `.conllu` file.
        tag_field: "upos" (field 4) or "xpos" (field 5).
        label_list: optional list of allowed tags (e.g. the training set's).

    Returns:
        list of `TaggedSentence`, `source` the sentence's first line.

    Raises:
        ValueError: (naming file, line and value) a line without 10 fields,
            a malformed or out-of-order word ID, a missing (`_`) tag, a tag
            not in `label_list`, or a file without sentences; an unknown
            `tag_field`.
    """
    if tag_field not in _CONLLU_TAG_COLUMNS:
        raise ValueError(f"tag_field must be one of {sorted(_CONLLU_TAG_COLUMNS)}; got {tag_field!r}.")
    column = _CONLLU_TAG_COLUMNS[tag_field]
    label_index = None if label_list is None else {t: i for i, t in enumerate(label_list)}
    sentences, current, start = [], None, None
    for number, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            if current is not None and current.words:
                sentences.append(current)
            current, start = None, None
            continue
        start = start or number
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(
                f"{path}:{number}: expected 10 tab-separated CoNLL-U fields, found "
                f"{len(fields)}: {line!r}."
            )
        if re.fullmatch(r"[0-9]+-[0-9]+|[0-9]+\.[0-9]+", fields[0]):
            continue  # multi-word token or empty node
        if current is None:
            current = TaggedSentence([], [], f"{path}:{start}")
        if not re.fullmatch(r"[0-9]+", fields[0]) or int(fields[0]) != len(current.words) + 1:
            raise ValueError(
                f"{path}:{number}: word ID {fields[0]!r} is not {len(current.words) + 1} "
                "(IDs count 1, 2, ... within a sentence)."
            )
        tag = fields[column]
        if tag == "_":
            raise ValueError(f"{path}:{number}: word {fields[1]!r} has no {tag_field} ('_').")
        _check_tag(tag, label_index, f"{path}:{number}")
        current.words.append(fields[1])
        current.tags.append(tag)
        current.lines.append(number)
    if current is not None and current.words:
        sentences.append(current)
    return _finish(path, sentences)


def read_conll(path, word_column=0, tag_column=-1, label_list=None):
    """Reads a CoNLL-2003-style file: whitespace-separated columns, one word a line.

    A blank line ends a sentence; `-DOCSTART-` lines are skipped. Every
    word line must have as many columns as the file's first one.

    Args:
        path: str or path-like, a UTF-8 text file.
        word_column, tag_column: int indices of the word and the tag
            (negative counts from the end; CoNLL-2003 NER is `0, -1`).
        label_list: optional list of allowed tags (e.g. the training set's).

    Returns:
        list of `TaggedSentence`.

    Raises:
        ValueError: (naming file, line and value) a line with another number
            of columns, columns out of range, a tag not in `label_list`, or
            a file without sentences.
    """
    label_index = None if label_list is None else {t: i for i, t in enumerate(label_list)}
    sentences, current, num_columns = [], None, None
    for number, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current is not None:
                sentences.append(current)
            current = None
            continue
        if num_columns is None:
            num_columns = len(fields)
            if not all(-num_columns <= c < num_columns for c in (word_column, tag_column)):
                raise ValueError(f"{path}:{number}: word_column={word_column} or tag_column="
                                 f"{tag_column} outside {num_columns} columns: {line.rstrip()!r}.")
        elif len(fields) != num_columns:
            raise ValueError(
                f"{path}:{number}: expected {num_columns} columns (as the first word line), "
                f"found {len(fields)}: {line.rstrip()!r}."
            )
        if current is None:
            current = TaggedSentence([], [], f"{path}:{number}")
        _check_tag(fields[tag_column], label_index, f"{path}:{number}")
        current.words.append(fields[word_column])
        current.tags.append(fields[tag_column])
        current.lines.append(number)
    if current is not None:
        sentences.append(current)
    return _finish(path, sentences)
