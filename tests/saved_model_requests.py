"""Test helpers for exports: many requests to a SavedModel in one fresh process, folder sizes."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_SCRIPT = r"""
import json
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the SavedModel uses
path, requests_file, out = sys.argv[1:4]
with open(requests_file, encoding="utf-8") as f:
    requests = json.load(f)
loaded = tf.saved_model.load(path)
results = []
for request in requests:
    function = loaded.signatures[request["signature"]]
    specs = function.structured_input_signature[1]
    dtypes = request.get("dtypes", {})
    try:
        inputs = {k: tf.constant(v, dtypes.get(k, specs[k].dtype)) for k, v in request["inputs"].items()}
        outputs = function(**inputs)
    except Exception as error:  # noqa: BLE001 (the error is the result)
        results.append({"error": f"{type(error).__name__}: {error}"})
        continue
    results.append({"outputs": {
        k: (np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(v.numpy()).tolist()
            if v.dtype == tf.string and v.numpy().size else v.numpy().tolist())
        for k, v in outputs.items()
    }})
with open(out, "w", encoding="utf-8") as f:
    json.dump(results, f)
"""


def requests_in_fresh_process(path, requests):
    """Runs requests against the SavedModel at `path` in one new Python process.

    Like `kbert.serving.run_saved_model_in_fresh_process` (nothing of this
    process is available), for many requests at the cost of one load.

    Args:
        path: str, the SavedModel folder.
        requests: list of dicts: `signature` (str), `inputs` (name -> nested
            lists or arrays), optional `dtypes` (name -> dtype name; default: the
            signature's).

    Returns:
        list, per request, of {"outputs": name -> numpy array} or {"error": str}.
    """
    with tempfile.TemporaryDirectory() as tmp:
        requests_file = os.path.join(tmp, "requests.json")
        out = os.path.join(tmp, "out.json")
        with open(requests_file, "w", encoding="utf-8") as f:
            json.dump(requests, f, default=lambda array: np.asarray(array).tolist())
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, path, requests_file, out],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(out, encoding="utf-8") as f:
            results = json.load(f)
    return [
        {"outputs": {k: np.asarray(v) for k, v in r["outputs"].items()}} if "outputs" in r else r
        for r in results
    ]


def folder_size(path):
    """Total bytes of the files under `path`."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def weights_nbytes(model):
    """Bytes of the model's distinct weights."""
    unique = {id(w): w for w in model.weights}
    return sum(np.asarray(w.numpy()).nbytes for w in unique.values())


def stored_tensors(saved_model_path):
    """name -> shape of the tensors in a SavedModel's variables checkpoint (object graph excluded)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(saved_model_path, "variables", "variables"))
    return {name: shape for name, shape in reader.get_variable_to_shape_map().items()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}
