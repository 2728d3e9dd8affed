"""Helpers the fine-tuning tasks share: ragged features and export versions."""

import os

import numpy as np


def next_version(base):
    """The TF Serving version to write under `base`: one past the highest existing, or 1."""
    if not os.path.isdir(base):
        return 1
    versions = [int(name) for name in os.listdir(base) if name.isdigit()]
    return max(versions, default=0) + 1


def ragged(arrays):
    """A list of 1-D arrays as an int32 `tf.RaggedTensor` `(len(arrays), None)`."""
    import tensorflow as tf

    return tf.RaggedTensor.from_row_lengths(
        np.concatenate(arrays).astype(np.int32), np.array([len(a) for a in arrays], np.int64)
    )


def is_entity_scheme(label_list):
    """True when every tag is `O` or `B-`/`I-`/`E-`/`S-` prefixed (NER-style spans)."""
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in label_list)
