"""The validator's SavedModel check: the folder loaded in a fresh process, as TF Serving loads it.

See `kbert.serving.validate` for the rules and the entry point.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from kbert.serving.validate import (
    SAMPLE_TEXTS,
    WARMUP_FILE,
    ArtifactReport,
    ValidationError,
    artifact_size,
    compare_arrays,
    judge,
    model_config,
    pack_texts,
    reference_outputs,
)

_SAVED_MODEL_SCRIPT = r"""
import json, os, statistics, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops of the text signatures
path, plan_file, out = sys.argv[1:4]
with open(plan_file, encoding="utf-8") as f:
    plan = json.load(f)
loaded = tf.saved_model.load(path)
report = {"signatures": {}, "warmup": {"file": False, "requests": 0, "errors": []}}
for name, fn in loaded.signatures.items():
    specs = fn.structured_input_signature[1]
    report["signatures"][name] = {
        "inputs": {k: s.dtype.name for k, s in specs.items()},
        "outputs": sorted(fn.structured_outputs),
    }
warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
if os.path.exists(warmup):
    from tensorflow_serving.apis import prediction_log_pb2
    report["warmup"]["file"] = True
    for i, record in enumerate(tf.data.TFRecordDataset(warmup)):
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            result = loaded.signatures[name](**inputs)
            for key, value in result.items():
                if value.dtype.is_floating and np.isnan(value.numpy()).any():
                    raise ValueError(f"output {key} holds NaN")
            report["warmup"]["requests"] += 1
            report["warmup"].setdefault("signatures", [])
            if name not in report["warmup"]["signatures"]:
                report["warmup"]["signatures"].append(name)
            if name == "serving_token_ids" and "token_ids" in inputs:
                report["warmup"]["sequence_length"] = int(inputs["token_ids"].shape[-1])
        except Exception as error:  # reported, not raised: the parent judges
            report["warmup"]["errors"].append(f"request {i}: {type(error).__name__}: {error}"[:500])

def call(signature, inputs):
    fn = loaded.signatures[signature]
    specs = fn.structured_input_signature[1]
    return fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})

arrays = {}
for item in plan["calls"]:
    fn = loaded.signatures.get(item["signature"])
    if fn is None or set(fn.structured_input_signature[1]) != set(item["inputs"]):
        continue
    for key, value in call(item["signature"], item["inputs"]).items():
        value = value.numpy()
        if value.dtype == object:
            value = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[str])(value) if value.size else value.astype(str)
        arrays[item["name"] + "/" + key] = value
timing = plan["timing"]
default = loaded.signatures.get("serving_default")
if default is not None and set(default.structured_input_signature[1]) == {"text"}:
    # Clients send text: time the path they take (packed to the export's length).
    timing = dict(timing, signature="serving_default", inputs={"text": plan["calls"][1]["inputs"]["text"][:1]})
report["latency_signature"] = timing["signature"]
if timing["signature"] in loaded.signatures:
    call(timing["signature"], timing["inputs"])
    times = []
    for _ in range(timing["runs"]):
        start = time.perf_counter()
        call(timing["signature"], timing["inputs"])
        times.append(time.perf_counter() - start)
    report["latency_ms"] = 1000 * statistics.median(times)
np.savez(out + ".npz", **arrays)
with open(out + ".json", "w", encoding="utf-8") as f:
    json.dump(report, f)
"""


def _run_saved_model(path, plan):
    with tempfile.TemporaryDirectory() as tmp:
        plan_file, out = os.path.join(tmp, "plan.json"), os.path.join(tmp, "out")
        with open(plan_file, "w", encoding="utf-8") as f:
            json.dump(plan, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run([sys.executable, "-c", _SAVED_MODEL_SCRIPT, path, plan_file, out],
                              capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise ValidationError(f"loading {path} in a fresh process failed: "
                                  + (lines[-1] if lines else f"exit code {proc.returncode}"))
        with open(out + ".json", encoding="utf-8") as f:
            report = json.load(f)
        with np.load(out + ".npz") as arrays:
            return report, dict(arrays)


def _lists(features):
    return {k: np.asarray(v).tolist() for k, v in features.items()}


def validate_saved_model(path, model, tokenizer, texts=SAMPLE_TEXTS, runs=20, extra_calls=(),
                         max_abs_diff=None):
    """Validates one SavedModel folder in a fresh process (see the module docstring).

    Args:
        path: str, a SavedModel folder (`BASE/VERSION`).
        model: the Keras model it was exported from (float32).
        tokenizer: its `kbert.text.BertTokenizer`.
        texts: sample strings; they are packed without truncation for the
            id signature, and sent as they are to a single-`text`
            `serving_default`.
        runs: int >= 20, calls timed for the batch-1 latency.
        extra_calls: `(name, signature, inputs)` to run in the same process
            (e.g. an exporter's fill-mask check); answers in `outputs[name]`.
        max_abs_diff: optional float replacing `TOLERANCES["saved_model"]`'s.

    Returns:
        `ArtifactReport`; `outputs` holds "ids", "text" and `extra_calls`' answers.
    """
    limit = model_config(model).max_position_embeddings
    features = pack_texts(tokenizer, texts, limit=limit)
    one = {k: v[:1].tolist() for k, v in features.items()}
    plan = {
        "calls": [{"name": "ids", "signature": "serving_token_ids", "inputs": _lists(features)},
                  {"name": "text", "signature": "serving_default",
                   "inputs": {"text": list(texts)}}]
                 + [{"name": name, "signature": signature, "inputs": _lists(inputs)}
                    for name, signature, inputs in extra_calls],
        "timing": {"signature": "serving_token_ids", "inputs": one, "runs": max(runs, 20)},
    }
    report = ArtifactReport(path, "SavedModel", artifact_size(path))
    try:
        served, arrays = _run_saved_model(path, plan)
    except ValidationError as error:
        report.problems.append(str(error))
        report.passed = False
        return report
    signatures = served["signatures"]
    for key, value in arrays.items():
        call, name = key.split("/", 1)
        report.outputs.setdefault(call, {})[name] = value
    report.kind = f"SavedModel {_saved_model_kind(signatures)}"
    report.latency_ms = served.get("latency_ms")
    report.notes.append(f"batch-1 latency measured on signature {served.get('latency_signature')}")
    expected = reference_outputs(model, features)
    ids = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("ids/")}
    if ids:
        report.max_abs_diff, report.cosine, report.label_agreement = compare_arrays(
            ids, expected, features["padding_mask"])
    text_inputs = signatures.get("serving_default", {}).get("inputs", {})
    if set(text_inputs) == {"text"} and text_inputs["text"] == "string":
        text_out = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("text/")}
        # The text signature packs to its export length: read it off the warmup's
        # id requests or the returned padding mask, and cut the reference there too.
        length = served["warmup"].get("sequence_length") or (
            text_out["padding_mask"].shape[1] if "padding_mask" in text_out else None)
        text_features, text_expected = features, expected
        if length and length < features["token_ids"].shape[1]:
            text_features = pack_texts(tokenizer, texts, length)
            text_expected = reference_outputs(model, text_features)
        diff, cosine, agreement = compare_arrays(
            {k: v for k, v in text_out.items() if np.asarray(v).dtype.kind == "f"},
            text_expected, text_features["padding_mask"])
        report.max_abs_diff = max(report.max_abs_diff or 0.0, diff)
        if cosine is not None:
            report.cosine = min(cosine, report.cosine if report.cosine is not None else 1.0)
        if agreement is not None:
            report.label_agreement = min(agreement, report.label_agreement or 1.0)
    warmup = served["warmup"]
    if warmup["file"]:
        report.notes.append(f"{warmup['requests']} warmup requests ran "
                            f"({', '.join(warmup.get('signatures', []))})")
        report.problems += [f"warmup {error}" for error in warmup["errors"]]
        missing = sorted(set(signatures) - set(warmup.get("signatures", [])))
        if missing:
            report.problems.append(f"the warmup file has no request for {missing}")
    else:
        report.notes.append(f"no warmup file ({WARMUP_FILE})")
    return judge(report, "saved_model", max_abs_diff)


def _saved_model_kind(signatures):
    outputs = set(signatures.get("serving_default", {}).get("outputs", []))
    for kind, marker in (("encoder", "pooled_output"), ("classifier", "probabilities"),
                         ("question answering", "answer"), ("regressor", "score"),
                         ("embedder", "embeddings"), ("tagger", "tags")):
        if marker in outputs:
            return kind
    return "model"
