"""Running a string-input TFLite file: a LiteRT interpreter with tensorflow-text's kernels.

`text_tflite_interpreter` registers the kernels of the file's two custom ops
(`CUSTOM_OPS`), `run_text_tflite` runs batches of texts through it, and
`file_custom_ops` lists what a file needs. `kbert.serving.tflite_text`
writes and verifies such files and re-exports these names.
"""

import numpy as np
import tensorflow_text as tf_text

from kbert.serving.fresh_process import ExportVerificationError

SIGNATURE = "serving_default"
TEXT_INPUT_NAMES = ("text", "text_pair")
# The custom ops of a string-input file, and the tensorflow-text registrar
# functions that add their kernels to a TFLite op resolver.
CUSTOM_OPS = {
    "FastBertNormalize": "AddFastBertNormalize",
    "FastWordpieceTokenizeWithOffsets": "AddFastWordpieceTokenize",
}
# Rows run through the interpreter (and the Keras reference) at a time.
CHUNK = 64


def text_tflite_interpreter(path=None, model_content=None):
    """A LiteRT interpreter with tensorflow-text's kernels for `CUSTOM_OPS` registered.

    Uses `ai_edge_litert.interpreter.InterpreterWithCustomOps` with the
    registrar functions of `tensorflow_text.tflite_registrar`
    (`AddFastBertNormalize`, `AddFastWordpieceTokenize`): each takes the
    address of the interpreter's `tflite::MutableOpResolver` and adds the
    op's kernel, which is how an app registers them too (in C++).

    Args:
        path: str, a `.tflite` file; or
        model_content: bytes, a flatbuffer.

    Returns:
        `ai_edge_litert.interpreter.InterpreterWithCustomOps`.

    Raises:
        ImportError: `ai-edge-litert` is not installed.
        ValueError / RuntimeError: the file needs an op that is neither a
            TFLite builtin nor in `CUSTOM_OPS` ("Encountered unresolved
            custom op"; raised here or when tensors are allocated).
    """
    from ai_edge_litert import interpreter as litert

    registerers = [getattr(tf_text.tflite_registrar, name) for name in CUSTOM_OPS.values()]
    return litert.InterpreterWithCustomOps(
        model_path=path, model_content=model_content, custom_op_registerers=registerers)


def _check_custom_ops(flatbuffer, num_segments):
    """Checks a converted file before it is written: only `CUSTOM_OPS`, and it runs.

    Reads the file's custom op names, then runs two texts (one empty)
    through it in LiteRT with the tensorflow-text kernels: TFLite prepares
    ops on dynamic shapes only when invoked, so allocation alone would miss
    an op without a kernel.

    Raises:
        ExportVerificationError: a custom op outside `CUSTOM_OPS` (named), or
            a failure to run.
    """
    extra = sorted(set(_custom_ops(flatbuffer)) - set(CUSTOM_OPS))
    if extra:
        raise ExportVerificationError(
            f"The string-input TFLite file needs custom ops {extra}, outside the TFLite "
            f"builtins and the tensorflow-text kernels {sorted(CUSTOM_OPS)}.")
    try:
        runner = text_tflite_interpreter(model_content=flatbuffer).get_signature_runner(SIGNATURE)
        fixed = int(runner.get_input_details()["text"]["shape_signature"][0])
        texts = [b"", b"Hello, world!"]
        for batch in [texts] if fixed < 1 else [[text] * fixed for text in texts]:
            batch = np.array(batch, dtype=object)
            runner(**{name: batch for name in TEXT_INPUT_NAMES[:num_segments]})
    except (RuntimeError, ValueError) as error:
        raise ExportVerificationError(
            f"The string-input TFLite file does not run in LiteRT: {error}") from error


def _custom_ops(flatbuffer):
    """The sorted custom (non-builtin) op names of a TFLite flatbuffer (bytes)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    return sorted({code.customCode.decode() for code in model.operatorCodes
                   if code.customCode is not None})


def file_custom_ops(path):
    """The names of the custom (non-builtin) ops in a TFLite file.

    Returns:
        sorted list of str, e.g. `["FastBertNormalize", "FastWordpieceTokenizeWithOffsets"]`
        for a file from `export_text_tflite`.
    """
    with open(path, "rb") as f:
        return _custom_ops(f.read())


def _text_batch(name, texts):
    """`texts` as a 1-D object array of UTF-8 bytes, or a clear error.

    Raises:
        ValueError: a single string instead of a batch, a batch that is not
            1-D, or an empty batch.
        TypeError: an element that is not str or bytes (its index and type named).
    """
    if isinstance(texts, (str, bytes)):
        raise ValueError(  # noqa: TRY004 (a rank-0 input: a shape error, as for arrays)
            f"`{name}` must be a batch of strings (a list or 1-D array); received a single "
            f"{type(texts).__name__}. Wrap it in a list."
        )
    array = np.asarray(texts, dtype=object) if not isinstance(texts, np.ndarray) else texts
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D batch of strings, shape (batch_size,); received shape "
            f"{array.shape}."
        )
    if not array.size:
        raise ValueError(f"`{name}` must hold at least one string; received an empty batch.")
    encoded = np.empty(array.shape, dtype=object)
    for i, text in enumerate(array):
        if isinstance(text, (str, np.str_)):
            encoded[i] = str(text).encode("utf-8")
        elif isinstance(text, (bytes, np.bytes_)):
            encoded[i] = bytes(text)
        else:
            raise TypeError(
                f"`{name}` must hold strings (str, or UTF-8 bytes); element {i} is "
                f"{type(text).__name__} {text!r}."
            )
    return encoded


def run_text_tflite(path, texts, text_pairs=None):
    """Runs a file from `export_text_tflite` on raw text.

    Inputs are bound by name through the signature runner. The batch is fed
    in chunks of up to 64 rows (the file's batch dimension is dynamic; a
    file with a fixed batch size is fed chunks of that size, one row at a
    time for batch 1). Each call uses a fresh interpreter.

    Args:
        path: str, the `.tflite` file.
        texts: list (or 1-D array) of str, or of bytes (sent as they are;
            invalid UTF-8 gives `[UNK]` for the word it is in).
        text_pairs: the second segments, same size, for a file exported with
            `num_segments=2`; None otherwise.

    Returns:
        dict output name -> NumPy array with the batch first (see
        `export_text_tflite`).

    Raises:
        ValueError: a single string, a batch that is not 1-D or is empty,
            `text_pairs` given to a one-segment file (or missing for a pair
            file), or batches of different sizes.
        TypeError: an element that is not str or bytes.
    """
    from kbert.serving.tflite import signature_runner

    runner = signature_runner(text_tflite_interpreter(path), SIGNATURE, path,
                              "a string-input file")
    inputs = runner.get_input_details()
    if "text" not in inputs or np.dtype(inputs["text"]["dtype"]).kind not in "OSU":
        raise ValueError(f"{path} is not a string-input file: it takes {sorted(inputs)}, not "
                         "a string `text`.")
    details = runner.get_input_details()
    batches = {"text": _text_batch("texts", texts)}
    if ("text_pair" in details) != (text_pairs is not None):
        expected = "takes `text` and `text_pair`" if "text_pair" in details else "takes only `text`"
        raise ValueError(
            f"{path} {expected}; received {'no ' if text_pairs is None else ''}text_pairs.")
    if text_pairs is not None:
        batches["text_pair"] = _text_batch("text_pairs", text_pairs)
        if len(batches["text_pair"]) != len(batches["text"]):
            raise ValueError(
                f"`texts` and `text_pairs` must have the same size; received "
                f"{len(batches['text'])} and {len(batches['text_pair'])}.")
    fixed = int(details["text"]["shape_signature"][0])
    step = fixed if fixed > 0 else CHUNK
    results = []
    for begin in range(0, len(batches["text"]), step):
        chunk = {name: batch[begin:begin + step] for name, batch in batches.items()}
        results.append(runner(**chunk))
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}
