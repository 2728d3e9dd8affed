"""In-graph WordPiece tokenizer (tensorflow-text `FastBertTokenizer`)."""

import os

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from kbert.text.normalization import normalize_text
from kbert.text.vocabulary import load_vocabulary

# Longest word (in UTF-8 bytes) that WordPiece splits; longer words become
# [UNK]. Google's BERT uses 100 characters; tensorflow-text counts bytes, so
# the two agree on ASCII words.
MAX_BYTES_PER_WORD = 100


@keras.saving.register_keras_serializable(package="kbert")
class BertTokenizer(keras.layers.Layer):
    """Maps a batch of strings to WordPiece ids, in the TensorFlow graph.

    Built on `tensorflow_text.FastBertTokenizer` (Song et al. 2021, "Fast
    WordPiece Tokenization"), which reproduces BERT's BasicTokenizer +
    WordpieceTokenizer (google-research/bert `tokenization.py`): split on
    whitespace and punctuation, each CJK character its own word, greedy
    longest-match-first WordPiece with `##` continuations, and words over 100
    bytes mapped to `[UNK]`. Text is first cleaned and, with
    `lowercase=True`, lower-cased, NFD-decomposed and stripped of accents by
    `normalize_text` (as BERT and HuggingFace's `BertTokenizer` do; ids
    match HF's `tokenizer.json` exactly on SST-2 and WikiText).

    No special tokens are added; `BertPacker` adds `[CLS]`/`[SEP]`.

    Args:
        vocabulary: str path of `vocab.txt` or a list of tokens (id = index).
            Must contain `[PAD] [UNK] [CLS] [SEP] [MASK]`.
        lowercase: bool, uncased model (True) or cased (False); None (the
            default) reads it as every kbert loader does
            (`kbert.checkpoints.tokenizer_files`): `do_lower_case` from a
            `tokenizer_config.json` beside a vocabulary file, else inferred
            from the tokens (a cased BERT vocabulary holds upper-case word
            pieces, an uncased one none). The resolved bool is `self.lowercase`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tf.string tensor `(batch_size,)`, or a list of str (a scalar
            or a single str is treated as a batch of one).

    Returns:
        `tf.RaggedTensor` of int32 ids, shape `(batch_size, None)`.

    Raises:
        FileNotFoundError / ValueError: missing or invalid vocabulary (see
            `load_vocabulary`).
        TypeError: inputs are not strings.
        ValueError: inputs of rank > 1.

    Example:
    >>> tokenizer = BertTokenizer("vocab.txt")  # doctest: +SKIP
    >>> tokenizer(tf.constant(["naïve café"])).to_list()  # doctest: +SKIP
    [[15743, 7668]]
    """

    def __init__(self, vocabulary, lowercase=None, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.pop("dtype", None)
        super().__init__(dtype="int32", **kwargs)
        self.vocabulary = load_vocabulary(vocabulary)
        if lowercase is None:
            from kbert.checkpoints import tokenizer_files

            if isinstance(vocabulary, (str, os.PathLike)):
                lowercase, _ = tokenizer_files.read_do_lower_case(os.fspath(vocabulary))
            else:
                lowercase = not tokenizer_files.vocabulary_is_cased(self.vocabulary)
        self.lowercase = bool(lowercase)
        self._token_to_id = {token: i for i, token in enumerate(self.vocabulary)}
        # Normalisation runs as separate graph ops (see `normalize_text`), so
        # the WordPiece op itself never lower-cases: its built-in lower-casing
        # applies NFKC case folding, which original BERT does not.
        self._fast_tokenizer = tf_text.FastBertTokenizer(
            self.vocabulary,
            token_out_type=tf.int32,
            max_bytes_per_word=MAX_BYTES_PER_WORD,
            unknown_token="[UNK]",
            lower_case_nfd_strip_accents=False,
        )
        self.built = True

    @property
    def vocab_size(self):
        """int, number of tokens in the vocabulary."""
        return len(self.vocabulary)

    def token_to_id(self, token):
        """Returns the id of `token`; raises KeyError naming it if absent."""
        if token not in self._token_to_id:
            raise KeyError(f"Token {token!r} is not in the vocabulary.")
        return self._token_to_id[token]

    def id_to_token(self, token_id):
        """Returns the token with id `token_id`; raises IndexError if out of range."""
        if not 0 <= int(token_id) < self.vocab_size:
            raise IndexError(f"Id {token_id} is outside [0, {self.vocab_size}).")
        return self.vocabulary[int(token_id)]

    @property
    def special_token_ids(self):
        """dict of the ids of `pad`, `unk`, `cls`, `sep` and `mask` tokens."""
        return {
            name: self._token_to_id[f"[{name.upper()}]"]
            for name in ("pad", "unk", "cls", "sep", "mask")
        }

    def __call__(self, inputs, *args, **kwargs):
        # Keras treats a Python list as a structure of inputs; a list of str
        # (or a str, or a NumPy array of str) is one batch of text here.
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs)
        ):
            inputs = tf.constant(inputs, tf.string)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string:
            raise TypeError(
                f"BertTokenizer expects tf.string inputs; received dtype {inputs.dtype.name}."
            )
        if inputs.shape.rank == 0:
            inputs = tf.expand_dims(inputs, 0)
        elif inputs.shape.rank is None or inputs.shape.rank > 1:
            raise ValueError(
                "BertTokenizer expects a batch of strings of shape (batch_size,); "
                f"received shape {inputs.shape}."
            )
        return self._fast_tokenizer.tokenize(normalize_text(inputs, self.lowercase))

    def compute_output_spec(self, inputs):
        """Symbolic output for a functional model on `keras.Input(shape=(), dtype="string")`.

        Returns:
            ragged int32 `KerasTensor` `(batch_size, None)`.

        Raises:
            TypeError, ValueError: a non-string input, or a rank above 1.
        """
        if inputs.dtype != "string":
            raise TypeError(f"BertTokenizer expects tf.string inputs; received dtype {inputs.dtype}.")
        if inputs.shape is None or len(inputs.shape) > 1:
            raise ValueError(
                "BertTokenizer expects a batch of strings of shape (batch_size,); "
                f"received shape {inputs.shape}."
            )
        batch = inputs.shape[0] if len(inputs.shape) == 1 else 1
        return keras.KerasTensor((batch, None), dtype="int32", ragged=True)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update({"vocabulary": self.vocabulary, "lowercase": self.lowercase})
        return config


def as_bert_tokenizer(tokenizer):
    """Returns `tokenizer` as a `BertTokenizer`, deserializing a `get_config` dict.

    Layers that hold a tokenizer (`BertTextPreprocessor`, `BertWordPacker`)
    take it through here, so their `.keras` files reload.

    Raises:
        ValueError: anything else than a `BertTokenizer` or its serialized form.
    """
    if isinstance(tokenizer, dict):
        tokenizer = keras.saving.deserialize_keras_object(tokenizer)
    if not isinstance(tokenizer, BertTokenizer):
        raise ValueError(
            f"`tokenizer` must be a kbert BertTokenizer; received {type(tokenizer).__name__}."
        )
    return tokenizer
