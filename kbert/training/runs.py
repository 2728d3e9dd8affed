"""What every kbert program does around training: quiet logs, run folders, starting points."""

import contextlib
import hashlib
import json
import os
import sys

from absl import logging


class RunError(ValueError):
    """A run folder or flag combination that cannot be used; the message says why."""


def quiet_logging(verbosity_requested):
    """Keeps TensorFlow's and absl's INFO chatter off the console unless asked for.

    Args:
        verbosity_requested: bool, the user passed `--verbosity` (then absl
            and TensorFlow log as asked).
    """
    if verbosity_requested:
        return
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def absorb_xla_notice(verbosity_requested):
    """Spends XLA's once-per-process "Compiled cluster using XLA!" notice off the console.

    kbert's layers run GELU and LayerNorm as XLA kernels in training
    (`kbert.layers.training_ops`); the first compile logs that INFO line from
    C++ through absl, past `TF_CPP_MIN_LOG_LEVEL`, in the middle of the
    progress bar. This compiles one tiny function on the CPU with stderr sent
    to the null device, so the line is spent there. Call it after the
    strategy is created (a multi-worker strategy must come before any op).

    Args:
        verbosity_requested: bool, the user passed `--verbosity` (then nothing
            is hidden).
    """
    if verbosity_requested:
        return
    import tensorflow as tf

    with stderr_to_file(os.devnull), tf.device("/CPU:0"):
        tf.function(lambda x: x + 1.0, jit_compile=True)(tf.constant(0.0))


def progress_verbosity():
    """`model.fit` verbosity: 1 (progress bar) on a terminal, 2 (one line per epoch) otherwise."""
    return 1 if sys.stdout.isatty() else 2


def changed_settings(saved, wanted):
    """The settings whose values differ, as `{name: (saved, wanted)}` sorted by name.

    A setting missing on one side counts as None there.
    """
    return {
        k: (saved.get(k), wanted.get(k))
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    }


def compare_run_config(path, wanted, what):
    """Refuses a run folder whose saved settings differ from `wanted`; writes nothing.

    Call it before creating or changing anything in the folder, so a refused
    run leaves the folder as it was.

    Args:
        path: str, JSON file of the run's settings (e.g. `MODEL_DIR/task_config.json`).
        wanted: dict of JSON values, the settings of this invocation.
        what: str naming the settings in the error.

    Returns:
        bool: the file exists (and holds the same settings).

    Raises:
        RunError: the file exists with other values; the message lists every
            changed setting as `name: saved -> requested`, or says the file is
            unreadable.
    """
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"Cannot read the run settings {path}: {e}") from e
    if not isinstance(saved, dict):
        raise RunError(f"{path} must hold a JSON object of run settings.")
    changed = changed_settings(saved, json.loads(json.dumps(wanted)))
    if changed:
        details = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise RunError(
            f"{os.path.dirname(path)} holds a run with other {what} ({details}). "
            "Use a new --model_dir, or the original flags to resume."
        )
    return True


def check_run_config(path, wanted, what):
    """Refuses to reuse a run folder whose saved settings differ from `wanted`; saves them if new.

    Args:
        path: str, JSON file of the run's settings (e.g. `MODEL_DIR/task_config.json`).
        wanted: dict, the settings of this invocation.
        what: str naming the settings in the error.

    Raises:
        RunError: the file exists with other values (each change listed as
            saved -> requested).
    """
    if compare_run_config(path, wanted, what):
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=2)


def load_starting_point(init_checkpoint=None, vocab_file=None, preset=None, lowercase=None,
                        dtype=None):
    """The encoder and tokenizer a fine-tuning run starts from.

    Either `init_checkpoint` (any format `kbert.checkpoints.load` reads; the
    tokenizer is the `vocab.txt` beside it, casing from its
    `tokenizer_config.json` or the vocabulary), or `vocab_file` + `preset`
    for a randomly initialised encoder. Nothing is written (see
    `write_tokenizer_files`). Call inside the strategy scope (the encoder's
    variables are created here).

    Args:
        init_checkpoint: str path, or None.
        vocab_file, preset: str, used when `init_checkpoint` is None.
        lowercase: optional bool overriding the casing.
        dtype: Keras dtype policy name for the encoder.

    Returns:
        (encoder, tokenizer, vocab_path): `vocab_path` is the vocabulary used.

    Raises:
        RunError: neither or both starting points, a missing file, an
            unknown preset, or a vocabulary whose size differs from the encoder's.
    """
    from kbert import checkpoints, models, text
    from kbert.checkpoints import tokenizer_files

    if bool(init_checkpoint) == bool(vocab_file):
        raise RunError("Give --init_checkpoint (a pretrained BERT) or --vocab_file with --preset.")
    if init_checkpoint:
        try:
            encoder = checkpoints.load(init_checkpoint, dtype=dtype)
            tokenizer = checkpoints.load_tokenizer(init_checkpoint, lowercase=lowercase)
        except (FileNotFoundError, ValueError) as e:
            raise RunError(f"--init_checkpoint={init_checkpoint}: {e}") from e
        vocab_path = tokenizer_files.find_vocabulary(init_checkpoint)
    else:
        if not os.path.isfile(vocab_file):
            raise RunError(f"--vocab_file={vocab_file} does not exist or is not a file.")
        if lowercase is None:
            lowercase, _ = tokenizer_files.read_do_lower_case(vocab_file)
        tokenizer = text.BertTokenizer(vocab_file, lowercase=lowercase)
        try:
            encoder = models.BertEncoder.from_preset(
                preset, dtype=dtype, vocab_size=tokenizer.vocab_size)
        except ValueError as e:
            raise RunError(f"--preset={preset}: {e}") from e
        vocab_path = vocab_file
    if tokenizer.vocab_size != encoder.bert_config.vocab_size:
        raise RunError(
            f"The vocabulary {vocab_path} has {tokenizer.vocab_size} tokens but the encoder's "
            f"vocab_size is {encoder.bert_config.vocab_size}."
        )
    return encoder, tokenizer, vocab_path


def file_digest(path):
    """sha256 hex digest of a file's bytes (to tell a changed input file on resume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(paths):
    """One sha256 hex digest of several files, in order (see `file_digest`).

    It changes when a file's bytes change, or files are added, dropped or
    reordered; for one file it is not `file_digest` of that file.

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_digest(path).encode("ascii") + b"\n")
    return digest.hexdigest()


def write_tokenizer_files(model_dir, tokenizer, vocab_path):
    """Copies the vocabulary into the run and records its casing.

    Writes `MODEL_DIR/vocab.txt` and `MODEL_DIR/tokenizer_config.json`
    (HuggingFace's `do_lower_case`, through
    `kbert.checkpoints.tokenizer_files`, as every kbert writer does), so the
    run folder alone rebuilds the tokenizer
    (`kbert.checkpoints.load_tokenizer(MODEL_DIR)`).
    """
    from kbert.checkpoints import tokenizer_files

    tokenizer_files.write_tokenizer_files(model_dir, vocab_path, bool(tokenizer.lowercase))


@contextlib.contextmanager
def stderr_to_file(path):
    """Sends everything written to the process's stderr (fd 2) to `path` while in the block.

    TensorFlow's converters and kernels log from C++ before absl's logging is
    initialised, past `TF_CPP_MIN_LOG_LEVEL`; this keeps that chatter in a log
    file of the run instead of on the user's console. Python exceptions still
    propagate; the log keeps their context.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def read_text_lines(path, flag):
    """The non-blank lines of a UTF-8 text file given by a program flag (newlines stripped).

    Args:
        path: str, the file.
        flag: str, the flag that named it (for the errors).

    Returns:
        list of str, at least one.

    Raises:
        ValueError: a missing file, a folder, bytes that are not UTF-8 (the
            line and byte named) or no text at all, each naming the flag.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{flag}={path} does not exist or is not a file.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{flag}={path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}).") from None
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError(f"{flag}={path} holds no text.")
    return lines
