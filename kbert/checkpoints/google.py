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


def checkpoint_file_names(prefix):
    """The files a `write_checkpoint(weights, prefix)` creates in the prefix's folder."""
    base = os.path.basename(prefix)
    return [f"{base}.index", f"{base}.data-00000-of-00001", "checkpoint"]


def write_checkpoint(weights, prefix):
    """Writes a canonical dict as a TF1 name-based checkpoint at `prefix`, all or nothing.

    The `checkpoint` state file records the prefix relative to its folder, so
    the folder can be moved or copied and still loads. Everything is written
    into a hidden sibling folder first and moved into place at the end
    (`kbert.staging`).

    Args:
        weights: canonical dict (name -> float32 array).
        prefix: str, e.g. `out/bert_model.ckpt`; its folder is created.

    Returns:
        str, the prefix written (`prefix.index`, `prefix.data-*`, `checkpoint`).

    Raises:
        FileExistsError: one of those files exists already (nothing is written).
    """
    from kbert.staging import staged_folder

    folder = os.path.dirname(os.path.abspath(prefix))
    with staged_folder(folder, checkpoint_file_names(prefix)) as stage:
        write_saver_checkpoint(weights, os.path.join(stage, os.path.basename(prefix)))
    return prefix


def write_saver_checkpoint(weights, prefix):
    """Writes the checkpoint files at `prefix` directly (no staging; see `write_checkpoint`)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {
            name: tf.compat.v1.Variable(np.asarray(value, np.float32), name=name)
            for name, value in weights.items()
        }
        saver = tf.compat.v1.train.Saver(
            var_list=variables,
            write_version=tf.compat.v1.train.SaverDef.V2,
            save_relative_paths=True,
        )
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix, write_meta_graph=False)
