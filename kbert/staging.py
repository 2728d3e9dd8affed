"""Writers that leave either the whole artifact or nothing: stage in a hidden sibling, then rename.

Every kbert writer (checkpoints in HuggingFace and Google layouts, converted
`.keras` files) validates its inputs first, writes into a temporary folder
beside the target (same file system, so the final step is a rename), and
moves the result into place only once everything was written. A failure or a
kill part way leaves no half-written checkpoint behind, only possibly a
hidden `.NAME.partial-*` folder for a killed process, never files at the
target. Files get the modes the user's umask gives ordinary files (some
writers, like safetensors, create 0600 files).
"""

import contextlib
import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normalize_modes(root):
    """Gives staged files 0666 and folders 0777 less the umask, as `open` and `mkdir` would."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def check_free(folder, names):
    """Raises FileExistsError naming the first of `folder/names` that exists.

    Args:
        folder: str, the target folder (need not exist).
        names: iterable of str, file or folder names to be written there.
    """
    for name in names:
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; remove it or write somewhere else.")


@contextlib.contextmanager
def staged_folder(folder, names):
    """Yields a temporary folder whose contents are moved into `folder` when the block succeeds.

    Args:
        folder: str, where the files belong; created if missing (by renaming
            the staging folder itself, so a new folder appears complete).
        names: the names the block will write; checked up front with
            `check_free`, so nothing existing is ever replaced.

    Yields:
        str, the staging folder (a hidden sibling of `folder`).

    Raises:
        FileExistsError: one of `names` exists in `folder` already (before
            anything is written).
        Whatever the block raises, after the staging folder is removed.
    """
    folder = os.path.abspath(os.fspath(folder))
    names = list(names)
    check_free(folder, names)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.partial-", dir=parent)
    try:
        yield stage
        _normalize_modes(stage)
        if not os.path.exists(folder):
            os.rename(stage, folder)
            return
        check_free(folder, os.listdir(stage))
        for name in os.listdir(stage):
            os.rename(os.path.join(stage, name), os.path.join(folder, name))
        os.rmdir(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(path):
    """Yields a temporary path beside `path`; renamed to `path` when the block succeeds.

    Raises:
        FileExistsError: `path` exists already (checked before the block).
    """
    path = os.path.abspath(os.fspath(path))
    with staged_folder(os.path.dirname(path), [os.path.basename(path)]) as stage:
        yield os.path.join(stage, os.path.basename(path))
