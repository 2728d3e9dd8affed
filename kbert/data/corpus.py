"""Plain-text corpora: reading documents, and the offline default corpus."""

import glob
import io
import os
import re

from kbert.data.files import read_text

# Sentence boundary: ., ! or ? followed by whitespace. Deliberately simple: a
# wrong split only moves an NSP boundary, never loses text.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def corpus_files(file_patterns):
    """The files a corpus flag names: each pattern's matches, sorted, in pattern order.

    Args:
        file_patterns: str or list of str, file paths or glob patterns.

    Returns:
        list of str paths (as matched, not made absolute).

    Raises:
        FileNotFoundError: a pattern matches no file (the pattern is named).
        IsADirectoryError: a pattern names a folder (the pattern and folder named).
    """
    if isinstance(file_patterns, (str, os.PathLike)):
        file_patterns = [file_patterns]
    paths = []
    for pattern in file_patterns:
        matched = sorted(glob.glob(os.fspath(pattern)))
        if not matched:
            raise FileNotFoundError(f"No corpus file matches {os.fspath(pattern)!r}.")
        folders = [m for m in matched if os.path.isdir(m)]
        if folders:
            raise IsADirectoryError(
                f"Corpus pattern {os.fspath(pattern)!r} matches the folder {folders[0]}; "
                "give text files (e.g. 'folder/*.txt')."
            )
        paths.extend(matched)
    return paths


def read_documents(file_patterns, split_sentences=True):
    """Reads plain-text files into documents of sentences.

    File format (google-research/bert `create_pretraining_data.py`): UTF-8,
    one sentence or paragraph per line, blank lines between documents. When
    `split_sentences` is true each line is further split at `.`, `!`, `?`
    followed by whitespace, so files with one paragraph per line (WikiText)
    still give sentence pairs.

    Args:
        file_patterns: str or list of str, file paths or glob patterns.
        split_sentences: bool, split lines into sentences.

    Returns:
        list of documents, each a non-empty list of non-empty str.

    Raises:
        FileNotFoundError: a pattern matches no file (the pattern is named).
        IsADirectoryError: a pattern names a folder.
        ValueError: the files hold no text, or bytes that are not UTF-8
            (file, line and byte named).
    """
    paths = corpus_files(file_patterns)
    documents = []
    for path in paths:
        documents.extend(parse_documents(read_text(path), split_sentences))
    if not documents:
        raise ValueError(f"The corpus files {paths} hold no text.")
    return documents


def parse_documents(text, split_sentences=True):
    """Splits the text of one corpus file into documents of sentences.

    Args:
        text: str in the corpus format of `read_documents`.
        split_sentences: bool, split lines into sentences.

    Returns:
        list of documents (possibly empty), each a non-empty list of non-empty str.
    """
    documents, current = [], []
    for line in io.StringIO(text, newline=None):
        line = line.strip()
        if not line:
            if current:
                documents.append(current)
            current = []
            continue
        parts = _SENTENCE_END.split(line) if split_sentences else [line]
        current.extend(part for part in parts if part)
    if current:
        documents.append(current)
    return documents


def merge_short_documents(documents, min_sentences=2):
    """Joins consecutive documents until each has `min_sentences` sentences.

    WikiText-style files put a blank line after every paragraph, so a
    "document" may be one paragraph; merging neighbours keeps IsNext pairs
    possible. Returns a new list; the sentence order is unchanged.
    """
    merged, current = [], []
    for document in documents:
        current.extend(document)
        if len(current) >= min_sentences:
            merged.append(current)
            current = []
    if current:
        if merged:
            merged[-1].extend(current)
        else:
            merged.append(current)
    return merged


def default_corpus_text():
    """The text of the offline default corpus (see `write_default_corpus`), as written.

    The corpus is the CPython documentation that ships with every Python
    install (`pydoc_data.topics`, the text of the "Python Language Reference"
    topics shown by `help()`): about 80 documents and 0.28 MB of real English
    prose. One document per topic; wrapped lines are joined into one
    paragraph per line; code examples (indented lines) are dropped.
    """
    from pydoc_data import topics

    documents = []
    for name in sorted(topics.topics):
        paragraphs, current = [], []
        for line in topics.topics[name].splitlines():
            if not line.strip() or line.startswith("   ") and not current:
                if current:
                    paragraphs.append(" ".join(current))
                    current = []
                continue
            if set(line.strip()) <= set("*=-~^"):
                continue
            current.append(line.strip())
        if current:
            paragraphs.append(" ".join(current))
        if paragraphs:
            documents.append("\n".join(paragraphs))
    return "\n\n".join(documents) + "\n"


def write_default_corpus(path):
    """Writes the offline default corpus (`default_corpus_text`) to `path`; returns the path.

    The text depends on the Python version (its `pydoc_data.topics`); the file
    is UTF-8 with `\\n` line ends on every platform.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(default_corpus_text())
    return path
