"""Running an export the way its consumer does: a SavedModel loaded in a fresh Python process
(nothing of the exporting process available, as in TF Serving), and comparing its outputs with
the Keras model's."""

import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

from kbert.serving.request_checks import TEXT_SIGNATURE


class ExportVerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model it came from."""


_RELOAD_SCRIPT = r"""
import pickle
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the SavedModel uses
path, requests_file, out = sys.argv[1:4]
with open(requests_file, "rb") as f:
    requests = pickle.load(f)
loaded = tf.saved_model.load(path)
decode = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[str])
arrays = {}
for i, (signature, inputs) in enumerate(requests):
    function = loaded.signatures[signature]
    specs = function.structured_input_signature[1]
    # (an empty array's dtype is NumPy's float64 default: its list converts to any dtype)
    result = function(**{k: tf.constant(v.tolist() if v.size == 0 else v, specs[k].dtype)
                         for k, v in inputs.items()})
    for k, v in result.items():
        value = v.numpy()
        if v.dtype == tf.string:
            value = decode(value) if value.size else value.astype(str)
        arrays[f"{i}/{k}"] = value
np.savez(out, **arrays)
"""


def run_requests_in_fresh_process(path, requests):
    """Loads the SavedModel at `path` in a new Python process and runs requests on it.

    This is how TF Serving sees the folder: nothing of the exporting process
    (its Python objects, the original vocabulary file) is available. One
    process (one TensorFlow start-up) serves all `requests`.

    Args:
        path: str, the SavedModel folder.
        requests: list of `(signature, inputs)`: a signature key and a dict
            input name -> nested lists or arrays (str, bytes (any bytes, also
            invalid UTF-8) or numbers, cast to the signature's dtypes).

    Returns:
        list (one per request) of dicts of NumPy arrays, the signature's
        outputs (strings decoded from UTF-8).

    Raises:
        ExportVerificationError: the process failed (its stderr is included).
    """
    requests = [(signature, {k: np.asarray(v) for k, v in inputs.items()})
                for signature, inputs in requests]
    with tempfile.TemporaryDirectory() as tmp:
        requests_file = os.path.join(tmp, "requests.pkl")
        out = os.path.join(tmp, "out.npz")
        with open(requests_file, "wb") as f:
            pickle.dump(requests, f)
        proc = subprocess.run(
            [sys.executable, "-c", _RELOAD_SCRIPT, path, requests_file, out],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise ExportVerificationError(
                f"Loading {path} in a fresh process failed:\n{proc.stderr[-4000:]}"
            )
        results = [{} for _ in requests]
        with np.load(out) as arrays:
            for key in arrays.files:
                index, name = key.split("/", 1)
                results[int(index)][name] = arrays[key]
        return results


def run_saved_model_in_fresh_process(path, inputs, signature=TEXT_SIGNATURE):
    """Loads the SavedModel at `path` in a new Python process and runs one signature.

    See `run_requests_in_fresh_process` (one request).

    Args:
        path: str, the SavedModel folder.
        inputs: a list of str (the `text` input), or a dict input name ->
            nested lists (strings or numbers, cast to the signature's dtypes).
        signature: str, the signature key.

    Returns:
        dict of numpy arrays, the signature's outputs (strings decoded from UTF-8).

    Raises:
        ExportVerificationError: the process failed (its stderr is included).
    """
    if not isinstance(inputs, dict):
        inputs = {"text": list(inputs)}
    return run_requests_in_fresh_process(path, [(signature, inputs)])[0]


def compare_outputs(actual, expected, padding_mask, atol, what):
    """Largest abs difference of `pooled_output` and real-token `sequence_output`.

    Args:
        actual, expected: dicts of float arrays with both outputs.
        padding_mask: `(batch, length)` array; padded rows are not compared.
        atol: float, the largest allowed difference.
        what: str naming the artifact in the error.

    Raises:
        ExportVerificationError: a difference above `atol` (or NaN).
    """
    mask = np.asarray(padding_mask).astype(bool)
    diffs = {
        "pooled_output": float(np.abs(actual["pooled_output"] - expected["pooled_output"]).max()),
        "sequence_output": float(
            np.abs(actual["sequence_output"][mask] - expected["sequence_output"][mask]).max()
        ),
    }
    worst = max(diffs.values())
    if not worst <= atol:
        raise ExportVerificationError(
            f"{what} differs from the Keras model: max abs differences {diffs} exceed atol={atol}."
        )
    return worst
