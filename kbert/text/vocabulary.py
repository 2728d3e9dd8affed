"""Reading, writing and learning WordPiece vocabularies (`vocab.txt`)."""

import os

import tensorflow as tf

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocabulary(vocabulary):
    """Returns a vocabulary as a list of tokens (id = list index).

    Args:
        vocabulary: str path of a `vocab.txt` (one token per line, UTF-8, the
            0-based line number is the id, as in Google's and HuggingFace's
            BERT releases), or a list/tuple of str tokens.

    Returns:
        list of str.

    Raises:
        FileNotFoundError: the path does not exist (named).
        IsADirectoryError: the path is a folder (named).
        ValueError: a file that is not UTF-8 ("PATH:LINE: not UTF-8 (byte
            0x.. at column N)"); a vocabulary that is empty, holds duplicates
            or empty tokens, or lacks one of `[PAD]`, `[UNK]`, `[CLS]`,
            `[SEP]`, `[MASK]` (which `BertTokenizer` and the packers need),
            each naming the file (or "the vocabulary list").
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        path = os.fspath(vocabulary)
        text = _read_vocabulary_file(path)
        # Lines end at "\n" only (as for `tf.lookup.TextFileInitializer`,
        # which reads the same file into SavedModel exports); `str.splitlines`
        # would also split at "\x85", "\u2028" and other characters that can
        # be tokens.
        tokens = [line.removesuffix("\r") for line in text.split("\n")]
        if tokens and not tokens[-1]:
            tokens.pop()
        source = path
    elif isinstance(vocabulary, (list, tuple)):
        tokens = list(vocabulary)
        source = "the vocabulary list"
    else:
        raise ValueError(
            "`vocabulary` must be a path to vocab.txt or a list of tokens; "
            f"received {type(vocabulary).__name__}."
        )
    if not tokens:
        raise ValueError(f"{source} holds no tokens.")
    bad = [i for i, token in enumerate(tokens) if not isinstance(token, str) or not token]
    if bad:
        raise ValueError(f"{source} has empty or non-string tokens at ids {bad[:10]}.")
    seen = {}
    duplicates = []
    for i, token in enumerate(tokens):
        if token in seen:
            duplicates.append((token, seen[token], i))
        seen[token] = i
    if duplicates:
        raise ValueError(f"{source} has duplicate tokens (token, first id, id): {duplicates[:10]}.")
    missing = [token for token in SPECIAL_TOKENS if token not in seen]
    if missing:
        raise ValueError(
            f"{source} lacks the special tokens {missing}; BERT needs all of "
            f"{list(SPECIAL_TOKENS)}."
        )
    return tokens


def _read_vocabulary_file(path):
    """The UTF-8 text of a `vocab.txt` (local or a `tf.io.gfile` URL such as gs://).

    Raises:
        FileNotFoundError, IsADirectoryError: naming the path.
        ValueError: bytes that are not UTF-8, naming the file, line and byte.
    """
    if "://" not in path:
        # Imported here: `kbert.data` imports `kbert.text`.
        from kbert.data.files import read_text

        return read_text(path)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No such file: {path}")
    if tf.io.gfile.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; expected a file.")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8."
        ) from None


def write_vocabulary(tokens, path):
    """Writes `tokens` to `path` as `vocab.txt`, one token per line (UTF-8)."""
    tokens = load_vocabulary(list(tokens))
    tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(tokens) + "\n")


def build_vocabulary(texts, vocab_size=8000, lowercase=True, min_count=2):
    """Learns a BERT WordPiece vocabulary from a corpus.

    Uses tensorflow-text's learner (`tensorflow_text.tools.wordpiece_vocab.
    bert_vocab_from_dataset`, the bottom-up WordPiece algorithm of the TF Text
    subword tutorial). Text is normalised exactly as `BertTokenizer` will see
    it (`kbert.text.normalization.normalize_text`), so every learned token is
    reachable.

    Args:
        texts: a `tf.data.Dataset` of scalar tf.string, or an iterable of str.
        vocab_size: int, target size including the special tokens. The
            learner may return fewer tokens on a small corpus.
        lowercase: bool, lower-case and strip accents first (uncased BERT).
        min_count: int >= 1, a word must occur this often to be counted.

    Returns:
        list of str: `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0-4), then the
        learned tokens.

    Raises:
        ValueError: `vocab_size` too small, or the corpus is empty.
    """
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens."
        )
    if not isinstance(texts, tf.data.Dataset):
        texts = list(texts)
        if not any(t.strip() for t in texts):
            raise ValueError("Cannot build a vocabulary from an empty corpus.")
        texts = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
    from kbert.text.normalization import normalize_text

    texts = texts.map(lambda text: normalize_text(text, lowercase))
    vocabulary = bert_vocab_from_dataset.bert_vocab_from_dataset(
        texts.batch(1024).prefetch(2),
        vocab_size=vocab_size,
        reserved_tokens=list(SPECIAL_TOKENS),
        bert_tokenizer_params={"lower_case": False},
        learn_params={"lower_thresh": min_count},
    )
    if len(vocabulary) <= len(SPECIAL_TOKENS):
        raise ValueError("The corpus produced no tokens; is it empty?")
    return vocabulary
