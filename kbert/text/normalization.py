"""BERT text normalisation as TensorFlow ops."""

import tensorflow as tf
import tensorflow_text as tf_text

# Characters BERT's BasicTokenizer deletes (`_clean_text`): NUL, U+FFFD and
# control/format characters (Unicode Cc, Cf) other than tab, newline, return.
_DELETED = r"[\x{0}\x{FFFD}]|[^\P{Cc}\t\n\r]|\p{Cf}"


def normalize_text(text, lowercase):
    """BERT's text normalisation as TensorFlow ops (google-research/bert `tokenization.py`).

    Deletes NUL, U+FFFD and control/format characters; when `lowercase`,
    lower-cases, decomposes to NFD and deletes combining marks (Unicode Mn),
    in that order, exactly as BERT's BasicTokenizer does. Compatibility
    characters ("™", "ﬁ", "²", full-width letters) are *not* folded (no NFKC),
    as in original BERT and HuggingFace.

    Args:
        text: tf.string tensor of any shape.
        lowercase: bool.

    Returns:
        tf.string tensor of the same shape.
    """
    text = tf.strings.regex_replace(text, _DELETED, "")
    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
        text = tf_text.normalize_utf8(text, "NFD")
        text = tf.strings.regex_replace(text, r"\p{Mn}", "")
    return text
