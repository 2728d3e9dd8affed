"""Google TF1 BERT checkpoints (google-research/bert `bert_model.ckpt`).

The canonical layout *is* this checkpoint's layout, so reading filters out
optimizer slots and writing saves each array under its name with a TF1
`Saver`, which is what google-research/bert and tf-models' converters read.
"""

import os

import numpy as np
import tensorflow as tf

# Variables of a TF1 training checkpoint that are not model weights.
_SKIP_SUFFIXES = ("/adam_m", "/adam_v", "/Adam", "/Adam_1")
_SKIP_NAMES = ("global_step",)


def is_google_checkpoint(prefix):
    """True when `prefix` names a TF checkpoint holding `bert/embeddings/...` variables."""
    try:
        names = {name for name, _ in tf.train.list_variables(prefix)}
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError):
        return False
    return "bert/embeddings/word_embeddings" in names


def resolve_prefix(path):
    """Returns the checkpoint prefix for a prefix or a folder (its latest checkpoint)."""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = sorted(p for p in os.listdir(path) if p.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0][: -len(".index")])
        raise FileNotFoundError(f"No TF checkpoint found in folder {path}.")
    return path


def read_checkpoint(prefix):
    """Reads a Google BERT checkpoint into a canonical dict (optimizer slots dropped).

    Raises:
        FileNotFoundError: no checkpoint at `prefix`.
    """
    prefix = resolve_prefix(prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, ValueError) as error:
        raise FileNotFoundError(f"No TF checkpoint at {prefix}: {error}") from error
    out = {}
    for name in reader.get_variable_to_shape_map():
        if name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES):
            continue
        out[name] = np.asarray(reader.get_tensor(name), np.float32)
    return out


def write_checkpoint(weights, prefix):
    """Writes a canonical dict as a TF1 name-based checkpoint at `prefix`.

    Returns:
        str, the prefix written (`prefix.index`, `prefix.data-*`).
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = {
            name: tf.compat.v1.Variable(np.asarray(value, np.float32), name=name)
            for name, value in weights.items()
        }
        saver = tf.compat.v1.train.Saver(var_list=variables, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix, write_meta_graph=False)
