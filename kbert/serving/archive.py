"""Writing exports atomically: a `keras.export.ExportArchive` that stores each weight once,
and a temporary sibling renamed into place when complete (with the TF Serving warmup file)."""

import contextlib
import os
import shutil
import tempfile

import keras

from kbert.serving.warmup import write_warmup_requests


def new_export_archive(*resources):
    """A `keras.export.ExportArchive` that will store each weight once.

    `ExportArchive.track(model)` lists the model's Keras variables, and
    `write_out` lists again the `tf.Variable`s the endpoints capture (the
    same weights, other Python objects): the SavedModel then held every
    weight twice (`variables/*` and `_all_variables/*`, 182 MB for
    all-MiniLM-L6-v2's 91 MB). The endpoints' variables are saved without
    tracking, so only resources that hold no variables (tokenizer and packer
    layers, `tf.Module`s with lookup tables) are tracked here; models passed
    in are skipped.

    Args:
        *resources: Keras layers/models and TensorFlow trackables the
            endpoints use.

    Returns:
        `keras.export.ExportArchive`.
    """
    archive = keras.export.ExportArchive()
    for resource in resources:
        if not list(getattr(resource, "variables", ())):
            archive.track(resource)
    return archive


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary sibling of `path` to write; renames it to `path` on success.

    On any error inside the block the temporary file or folder is removed and
    nothing appears at `path`, so a reader (TF Serving polls its base folder
    for versions) never sees a half-written export. The temporary name
    starts with "." and is not a number, which TF Serving ignores.

    Args:
        path: str, the file or folder to create; its parent folder is
            created if missing. A folder target must not exist; a file target
            is replaced.

    Yields:
        str, the temporary path (absent: create it as a file or folder).

    Raises:
        FileExistsError: a folder appeared at `path` while writing.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    target = os.path.join(temporary, name)
    try:
        yield target
        if os.path.isdir(target):
            if os.path.exists(path):
                raise FileExistsError(f"{path} appeared while the export was written.")
            os.rename(target, path)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_archive(archive, path, warmup_requests):
    """Writes `archive` as a SavedModel at `path` with its warmup file, atomically.

    The SavedModel and `assets.extra/tf_serving_warmup_requests` are written
    into a temporary sibling that is renamed to `path` only when both are
    complete (see `atomic_output`), so TF Serving never loads a version
    without its warmup requests.

    Args:
        archive: a `keras.export.ExportArchive` with its endpoints.
        path: str, the SavedModel folder (must not exist).
        warmup_requests: list of `(signature, inputs)`, at least one for
            every signature of the archive (see
            `kbert.serving.warmup.write_warmup_requests`).

    Returns:
        str, `path`.

    Raises:
        FileExistsError: `path` appeared while writing.
        ValueError: warmup requests that miss a signature or do not match
            its inputs (see `kbert.serving.warmup.check_warmup_requests`).
        Whatever tracing or writing raises; nothing is left at `path` then.
    """
    with atomic_output(path) as temporary:
        archive.write_out(temporary, verbose=False)
        write_warmup_requests(temporary, warmup_requests)
    return path
