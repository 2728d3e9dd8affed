"""One validator for every kbert export: each artifact run the way its consumer runs it.

`validate_export(path, model)` finds the artifacts under `path` (TF Serving
SavedModel folders and `.tflite` files), runs each in its own runtime and
compares it with the Keras model it came from:

* SavedModel: loaded in a fresh Python process (`import tensorflow_text`,
  `tf.saved_model.load`), as TF Serving sees the folder: nothing of the
  exporting process is available. Every request of its TF Serving warmup file
  (`assets.extra/tf_serving_warmup_requests`) must run; `serving_token_ids` is
  compared with the Keras model on the same ids (every float output; the
  sequence output on real tokens), and `serving_default` on sample texts
  (classifiers: probabilities and labels).
* TFLite with int32 id inputs: the LiteRT interpreter (`ai_edge_litert`), the
  runtime TFLite's own docs now point phones and Python to, inputs bound by
  name through the signature runner. The recipe (float32, float16,
  dynamic-range int8, integer) is read off the file's tensor types and sets
  the tolerance (`TOLERANCES`; `tflite_recipes.recipe_of`).

Each artifact gets a row: size, max abs difference, agreement (pooled-output
cosine for encoders, label agreement for classifiers), median batch-1 latency
over `runs` calls, and pass/fail. Tolerances follow issue 8: a SavedModel
within 1e-5 of Keras, float32 TFLite within 1e-4, float16 and dynamic-range
int8 pooled cosine >= 0.99 (labels >= 97%), `int8_selective` cosine >= 0.98.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "it 's a charming and often affecting journey .",
    "A function returns a value; a generator yields values.",
    "Naïve café owners in Zürich don't serve crème brûlée!",
    "unflinchingly bleak and desperate",
    "",
)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Per artifact kind: (max abs difference, min cosine of an encoder's pooled output or an
# embedder's embedding, min label agreement of a classifier); None: not required. Quantized
# classifiers are held to their labels: the cosine of two-class probabilities says little.
TOLERANCES = {
    "saved_model": (1e-5, None, 1.0),
    "float32": (1e-4, None, 1.0),
    "float16": (None, 0.99, 0.97),
    "dynamic_int8": (None, 0.99, 0.97),
    "int8_selective": (None, 0.98, 0.97),
}


class ValidationError(RuntimeError):
    """An export could not be validated (no artifact, no reference model)."""


@dataclasses.dataclass
class ArtifactReport:
    """One artifact's validation result (a row of `format_report`).

    Attributes:
        path: str, the artifact.
        kind: str, e.g. "SavedModel encoder" or "TFLite classifier float16".
        size_bytes: int, the file or folder size on disk.
        max_abs_diff: float or None, the largest abs difference from Keras.
        cosine: float or None, the smallest per-example cosine similarity of
            the pooled output (encoders) or probabilities (classifiers).
        label_agreement: float or None, fraction of labels equal to Keras'.
        latency_ms: float, median batch-1 call time in milliseconds.
        passed: bool.
        problems: list of str, why it failed (empty when it passed).
        notes: list of str (warmup requests run, recipe read from the file).
        outputs: dict, what the artifact answered to the sample texts (a
            SavedModel: call name -> dict of arrays; TFLite: dict of arrays).
    """

    path: str
    kind: str
    size_bytes: int
    max_abs_diff: float | None = None
    cosine: float | None = None
    label_agreement: float | None = None
    latency_ms: float | None = None
    passed: bool = True
    problems: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    outputs: dict = dataclasses.field(default_factory=dict, repr=False)


def find_artifacts(path):
    """The SavedModel folders and `.tflite` files at or under `path`, sorted.

    Hidden folders (a staging `.export-partial-*` or `.NAME.partial-*`) are
    skipped: they are not published artifacts.

    Args:
        path: str, an artifact or a folder holding artifacts (the output
            folder of `export.export_bert`, a fine-tuning run's `export/`).

    Returns:
        list of (kind, path), kind "saved_model" or "tflite".

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist.")
    if os.path.isfile(path):
        return [("tflite", path)] if path.endswith(".tflite") else []
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "saved_model.pb" in files:
            found.append(("saved_model", root))
            dirs[:] = []
            continue
        found += [("tflite", os.path.join(root, f)) for f in sorted(files) if f.endswith(".tflite")]
    return sorted(found, key=lambda item: item[1])


def find_reference_model(path, levels=4):
    """The Keras model an export came from, found beside it: for the CLI's default `--model`.

    Looks in the folder of `path` and up to `levels` folders above for a
    fine-tuning run's `model.keras` or a pretraining run's `encoder.keras`
    (`trainers.finetune` exports into `RUN/export`, the README's
    `export.export_bert` into `RUN/export`).

    Returns:
        str, the run folder or `.keras` file, or None when there is none.
    """
    folder = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    for _ in range(levels + 1):
        for name in ("model.keras", "encoder.keras"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return None


def load_reference(source):
    """Loads the Keras model and tokenizer to validate against.

    Args:
        source: a kbert `.keras` file (a task model's `model.keras`, or an
            encoder), or any checkpoint `kbert.checkpoints.load` reads (its
            encoder is the reference).

    Returns:
        (keras model, `kbert.text.BertTokenizer`), the tokenizer from the
        vocabulary and `tokenizer_config.json` beside `source`.

    Raises:
        FileNotFoundError, ValueError: an unreadable source or vocabulary.
    """
    import keras

    import kbert  # noqa: F401  (registers the classes .keras files name)
    from kbert import checkpoints

    if str(source).endswith(".keras") and os.path.isfile(source):
        model = keras.saving.load_model(source, compile=False)
    else:
        model = checkpoints.load(source, dtype="float32")
    return model, checkpoints.load_tokenizer(source)


def reference_outputs(model, features):
    """The Keras model's outputs under the names kbert's exports give them.

    Args:
        model: a kbert encoder or task model (float32).
        features: dict of int32 `token_ids`, `segment_ids`, `padding_mask`
            `(batch, length)`.

    Returns:
        dict name -> float32 array: the encoder's `pooled_output` and
        `sequence_output`; a classifier's `logits` and `probabilities` (or a
        regressor's `score`); a tagger's `logits`; QA's `start_logits`/
        `end_logits`; an embedder's `embeddings`.
    """
    import keras

    outputs = model(features, training=False)
    if isinstance(outputs, dict):
        return {k: keras.ops.convert_to_numpy(v).astype(np.float32) for k, v in outputs.items()}
    logits = keras.ops.convert_to_numpy(outputs).astype(np.float32)
    if type(model).__name__ == "BertTextEmbedder":
        return {"embeddings": logits}
    if type(model).__name__ == "BertClassifier":
        if model.num_classes == 1:
            return {"score": logits[:, 0]}
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return {"logits": logits, "probabilities": shifted / shifted.sum(-1, keepdims=True)}
    return {"logits": logits}


def pack_texts(tokenizer, texts, sequence_length=None, limit=512):
    """Packs `texts` as `[CLS] text [SEP]` with kbert's tokenizer and packer.

    Args:
        tokenizer: `kbert.text.BertTokenizer`.
        texts: list of str.
        sequence_length: int, or None for the longest text's length (+2,
            at least 3, at most `limit`): at that length nothing is cut.
        limit: int, the model's `max_position_embeddings`.

    Returns:
        dict of int32 arrays `token_ids`, `segment_ids`, `padding_mask` `(len(texts), L)`.
    """
    import tensorflow as tf

    from kbert.text import BertPacker

    pieces = tokenizer(tf.constant(list(texts)))
    if sequence_length is None:
        longest = int(tf.reduce_max(pieces.row_lengths())) if len(texts) else 0
        sequence_length = min(max(longest + 2, 3), limit)
    special = tokenizer.special_token_ids
    packer = BertPacker(sequence_length, special["cls"], special["sep"], special["pad"])
    return {k: np.asarray(v, np.int32) for k, v in packer(pieces).items()}


def _cosines(actual, expected):
    actual = np.asarray(actual, np.float64).reshape(len(actual), -1)
    expected = np.asarray(expected, np.float64).reshape(len(expected), -1)
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    return (actual * expected).sum(1) / np.maximum(norms, 1e-30)


def compare_arrays(actual, expected, padding_mask):
    """Max abs difference, min cosine and label agreement of two output dicts.

    Compares the float outputs present in both. `sequence_output` and
    `logits` of rank 3 are compared on real tokens only (`padding_mask`;
    `actual` may be longer than `expected`, its extra positions are padding
    of a longer export). The cosine is taken on `pooled_output` or
    `embeddings`; labels are the argmax of `probabilities`.

    Returns:
        (max_abs_diff, cosine or None, label_agreement or None); NaN
        anywhere gives an infinite difference, and no output in common
        (an export of another kind of model) a max_abs_diff of None.
    """
    mask = np.asarray(padding_mask).astype(bool)
    worst, cosine, agreement = None, None, None
    for name, want in expected.items():
        if name not in actual:
            continue
        worst = worst or 0.0
        got = np.asarray(actual[name], np.float32)
        if want.ndim == 3:
            got, want = got[:, : want.shape[1]][mask], want[mask]
        if got.shape != want.shape:
            raise ValueError(f"`{name}` has shape {got.shape}; the Keras model gives {want.shape}.")
        diff = float(np.abs(got - want).max()) if got.size else 0.0
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
        if name in ("pooled_output", "embeddings"):
            cosine = float(_cosines(got, want).min())
        if name == "probabilities":
            agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    return worst, cosine, agreement


def judge(report, recipe, max_abs_diff=None):
    """Adds to `report.problems` what its numbers break of `TOLERANCES[recipe]`; sets `passed`.

    Problems already recorded (a failed warmup request, say) are kept;
    `max_abs_diff` replaces the recipe's largest allowed difference.
    """
    max_diff, min_cosine, min_agreement = TOLERANCES[recipe]
    max_diff = max_abs_diff if max_abs_diff is not None else max_diff
    judged = (max_diff is not None or (min_cosine is not None and report.cosine is not None)
              or (min_agreement is not None and report.label_agreement is not None))
    if report.max_abs_diff is None or not judged:
        report.problems.append("no output could be compared with the Keras model (an export "
                               "of another kind of model?)")
    elif max_diff is not None and not report.max_abs_diff <= max_diff:
        report.problems.append(f"max abs difference {report.max_abs_diff:.3g} > {max_diff:g}")
    if min_cosine is not None and report.cosine is not None and not report.cosine >= min_cosine:
        report.problems.append(f"cosine {report.cosine:.5f} < {min_cosine}")
    if (min_agreement is not None and report.label_agreement is not None
            and report.label_agreement < min_agreement):
        report.problems.append(
            f"label agreement {report.label_agreement:.2%} < {min_agreement:.0%}")
    report.passed = not report.problems
    return report


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


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
    report = ArtifactReport(path, "SavedModel", _size(path))
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
    report.notes.append(f"latency of {served.get('latency_signature')}")
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


def model_config(model):
    """The `BertConfig` of an encoder or of a task model's encoder."""
    return getattr(model, "bert_config", None) or model.encoder.bert_config


# kbert's id inputs under the names a TFLite file may give them (MediaPipe's for classifiers).
_TFLITE_ID_NAMES = {"token_ids": "token_ids", "segment_ids": "segment_ids",
                    "padding_mask": "padding_mask", "ids": "token_ids", "mask": "padding_mask"}


def validate_tflite(path, model, tokenizer, texts=SAMPLE_TEXTS, runs=20, max_abs_diff=None):
    """Validates one TFLite file with int32 id inputs in the LiteRT interpreter.

    Every input is bound by name through the file's (single) signature
    runner. The texts are packed to the file's fixed length and fed in
    batches of the file's fixed size; outputs are compared by name with
    `reference_outputs`, so a file that binds an input to the wrong tensor
    (say `segment_ids` where `token_ids` belongs) fails.

    Args:
        max_abs_diff: optional float replacing the recipe's largest allowed
            difference (`TOLERANCES`).

    Returns:
        `ArtifactReport` (kind "TFLite encoder|classifier RECIPE"); `outputs`
        holds the file's answers, one row per text (cycled to whole batches).
    """
    import time

    from ai_edge_litert.interpreter import Interpreter

    from kbert.serving.tflite import check_tflite_inputs, id_table_sizes
    from kbert.serving.tflite_recipes import recipe_of

    report = ArtifactReport(path, "TFLite", _size(path))
    interpreter = Interpreter(model_path=path)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        report.problems.append(f"expected one signature, found {sorted(signatures)}")
        report.passed = False
        return report
    (name,) = signatures
    runner = interpreter.get_signature_runner(name)
    details = runner.get_input_details()
    unknown = sorted(set(details) - set(_TFLITE_ID_NAMES))
    if unknown:
        report.problems.append(f"inputs {unknown} are not token-id inputs this validator knows")
        report.passed = False
        return report
    try:
        recipe = recipe_of(path)
    except ValueError as error:
        report.problems.append(str(error))
        report.passed = False
        return report
    batch, length = (int(d) for d in next(iter(details.values()))["shape"])
    # Texts are cycled to fill whole batches of the file's fixed size.
    count = -(-len(texts) // batch) * batch
    features = pack_texts(tokenizer, [texts[i % len(texts)] for i in range(count)], length)
    names = {file_name: _TFLITE_ID_NAMES[file_name] for file_name in sorted(details)}
    config = model_config(model)
    limits = {"token_ids": config.vocab_size, "segment_ids": config.type_vocab_size}
    # A file of another model reads its own tables: say so instead of feeding it ids it lacks.
    rows = id_table_sizes(path)
    for file_name, key in names.items():
        found = rows.get(details[file_name]["index"])
        if key in limits and found is not None and found != limits[key]:
            what = "vocabulary" if key == "token_ids" else "segment types"
            report.problems.append(
                f"its `{file_name}` table has {found} rows; the Keras model's {what} has "
                f"{limits[key]} (the export of another model?)")
    if report.problems:
        report.passed = False
        return report
    outputs = {}
    for start in range(0, count, batch):
        chunk = {k: v[start:start + batch] for k, v in features.items()}
        arrays = check_tflite_inputs(path, details, chunk, names, id_limits=limits)
        for key, value in runner(**arrays).items():
            outputs.setdefault(key, []).append(value)
    outputs = {k: np.concatenate(v) for k, v in outputs.items()}
    report.outputs = outputs
    expected = reference_outputs(model, features)
    report.kind = f"TFLite {'classifier' if 'probabilities' in outputs else 'encoder'} {recipe}"
    report.max_abs_diff, report.cosine, report.label_agreement = compare_arrays(
        outputs, expected, features["padding_mask"])
    one = check_tflite_inputs(path, details, {k: v[:batch] for k, v in features.items()}, names,
                              id_limits=limits)
    times = []
    for _ in range(max(runs, 20) + 1):
        start = time.perf_counter()
        runner(**one)
        times.append(time.perf_counter() - start)
    report.latency_ms = 1000 * float(np.median(times[1:]))
    report.notes.append(f"recipe {recipe} (read off its layers' dtypes), batch {batch}, "
                        f"length {length}, {count} texts")
    return judge(report, recipe, max_abs_diff)


def _flatbuffer(path):
    from tensorflow.lite.python import schema_py_generated as schema_fb

    with open(path, "rb") as f:
        return schema_fb.Model.GetRootAs(f.read(), 0)


def has_task_metadata(path):
    """Whether a `.tflite` file carries TFLite Model Metadata (a MediaPipe/Task Library file)."""
    model = _flatbuffer(path)
    return any(model.Metadata(i).Name() == b"TFLITE_METADATA" for i in range(model.MetadataLength()))


def custom_ops(path):
    """The names of the custom (non-builtin) ops a `.tflite` file uses, sorted."""
    model = _flatbuffer(path)
    codes = (model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength()))
    return sorted(code.decode() for code in codes if code)


def validate_text_tflite(path, model, tokenizer, texts=SAMPLE_TEXTS, runs=20):
    """Validates a string-input TFLite file (tokenizer inside) in LiteRT with tf-text's kernels.

    The file's ids must equal kbert's `BertTokenizer` + `BertPacker` at its
    length, except on texts holding the characters where the on-device
    normaliser is documented to differ (`tflite_text.tokenizer_differences`);
    its outputs are compared with Keras on the file's own ids.

    Returns:
        `ArtifactReport` (kind "TFLite text-in encoder|classifier"), judged as float32.
    """
    import time

    from kbert.serving import tflite_text

    report = ArtifactReport(path, "TFLite text-in", _size(path))
    outputs = tflite_text.run_text_tflite(path, texts)
    report.outputs = outputs
    length = outputs["token_ids"].shape[1]
    features = pack_texts(tokenizer, texts, length)
    differs = np.zeros(len(texts), bool)
    for name, value in features.items():
        differs |= (outputs[name] != value).any(axis=1)
    explained = tflite_text.tokenizer_differences(tokenizer, texts)
    unexplained = [i for i in np.flatnonzero(differs) if not explained[i]]
    if unexplained:
        report.problems.append(f"ids differ from kbert's tokenizer on texts {unexplained} "
                               f"(first: {texts[unexplained[0]]!r}) with no documented cause")
    if differs.any():
        report.notes.append(f"ids differ on texts {np.flatnonzero(differs).tolist()} by the "
                            "documented on-device normalisation")
    own = {name: outputs[name] for name in ("token_ids", "segment_ids", "padding_mask")}
    report.kind += " classifier" if "probabilities" in outputs else " encoder"
    report.max_abs_diff, report.cosine, report.label_agreement = compare_arrays(
        outputs, reference_outputs(model, own), own["padding_mask"])
    runner = tflite_text.text_tflite_interpreter(path).get_signature_runner()
    one = np.array([texts[0]], dtype=object)
    times = []
    for _ in range(max(runs, 20) + 1):
        start = time.perf_counter()
        runner(text=one)
        times.append(time.perf_counter() - start)
    report.latency_ms = 1000 * float(np.median(times[1:]))
    report.notes.append(f"custom ops {custom_ops(path)}, length {length}")
    return judge(report, "float32")


def validate_task_file(path, model, tokenizer, texts=SAMPLE_TEXTS, runs=20):
    """Runs a MediaPipe-format classifier in MediaPipe's `TextClassifier`, as an app does.

    MediaPipe tokenizes the text itself from the file's metadata; the texts
    are first normalised as an app should (`task_library.normalize_texts`:
    MediaPipe's tokenizer does not strip accents) and the reference is the
    Keras model on kbert's ids of the same texts at the file's length.

    Returns:
        `ArtifactReport` (kind "MediaPipe TextClassifier"), judged as float32.
    """
    import time

    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.text import text_classifier

    from kbert.serving import task_library

    report = ArtifactReport(path, "MediaPipe TextClassifier", _size(path))
    try:
        info = task_library.read_task_metadata(path)
    except ValueError as error:
        report.problems.append(str(error))
        report.passed = False
        return report
    texts = task_library.normalize_texts(texts)
    options = text_classifier.TextClassifierOptions(
        base_options=base_options.BaseOptions(model_asset_path=os.fspath(path)))
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        scores = []
        for text in texts:
            categories = classifier.classify(text).classifications[0].categories
            by_name = {c.category_name: c.score for c in categories}
            scores.append([by_name[label] for label in info["labels"]])
        times = []
        for _ in range(max(runs, 20) + 1):
            start = time.perf_counter()
            classifier.classify(texts[0])
            times.append(time.perf_counter() - start)
    features = pack_texts(tokenizer, texts, info["sequence_length"])
    report.max_abs_diff, report.cosine, report.label_agreement = compare_arrays(
        {"probabilities": np.array(scores, np.float32)}, reference_outputs(model, features),
        features["padding_mask"])
    report.latency_ms = 1000 * float(np.median(times[1:]))
    report.notes.append(f"{len(info['labels'])} labels, length {info['sequence_length']}, "
                        "text tokenized by MediaPipe")
    return judge(report, "float32")


def validate_export(path, model=None, tokenizer=None, texts=SAMPLE_TEXTS, runs=20):
    """Validates every artifact at or under `path` against the Keras model.

    Args:
        path: str, an artifact or a folder of artifacts (see `find_artifacts`).
        model: the Keras model (an object, or a path for `load_reference`);
            None: `find_reference_model(path)`.
        tokenizer: `kbert.text.BertTokenizer`; needed with a model object,
            read beside a model path otherwise.
        texts: sample strings (at least one).
        runs: int, calls timed per artifact (at least 20).

    Returns:
        list of `ArtifactReport`, one per artifact.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValidationError: no artifact under `path`, no reference model, or no texts.
    """
    artifacts = find_artifacts(path)
    if not artifacts:
        raise ValidationError(f"{path} holds no SavedModel folder and no .tflite file.")
    texts = list(texts)
    if not texts:
        raise ValidationError("texts must hold at least one sample string.")
    if model is None:
        model = find_reference_model(path)
        if model is None:
            raise ValidationError(
                f"no Keras model found beside {path} (model.keras or encoder.keras in it or "
                "above it); give the checkpoint it was exported from (--model).")
    if isinstance(model, (str, os.PathLike)):
        model, found = load_reference(os.fspath(model))
        tokenizer = tokenizer or found
    if tokenizer is None:
        raise ValidationError("a tokenizer is needed with a model object.")
    reports = []
    for kind, artifact in artifacts:
        # One damaged or foreign artifact gets its FAIL row; the others are still checked.
        try:
            if kind == "saved_model":
                reports.append(validate_saved_model(artifact, model, tokenizer, texts, runs))
            elif custom_ops(artifact):
                reports.append(validate_text_tflite(artifact, model, tokenizer, texts, runs))
            else:
                reports.append(validate_tflite(artifact, model, tokenizer, texts, runs))
                if has_task_metadata(artifact):
                    reports.append(validate_task_file(artifact, model, tokenizer, texts, runs))
        except Exception as error:  # noqa: BLE001  (reported as that artifact's failure)
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reports.append(ArtifactReport(
                artifact, "TFLite" if kind == "tflite" else "SavedModel", _size(artifact),
                passed=False, problems=[f"could not be run: {type(error).__name__}: {message}"]))
    return reports


def format_report(reports, root=None):
    """The reports as a text table: artifact, kind, size, differences, latency, result."""
    header = ("artifact", "kind", "size", "max |diff|", "cosine", "labels", "batch-1 ms", "result")
    rows = []
    for r in reports:
        name = os.path.relpath(r.path, root) if root and os.path.isdir(root) else r.path
        name = os.path.basename(os.path.abspath(r.path)) if name == "." else name
        rows.append((
            name, r.kind, f"{r.size_bytes / 2**20:.1f} MiB",
            "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
            "-" if r.cosine is None else f"{r.cosine:.5f}",
            "-" if r.label_agreement is None else f"{r.label_agreement:.1%}",
            "-" if r.latency_ms is None else f"{r.latency_ms:.2f}",
            "ok" if r.passed else "FAIL",
        ))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    for r, row in zip(reports, rows):
        lines += [f"  {row[0]}: {note}" for note in r.notes]
    for r in reports:
        for problem in r.problems:
            lines.append(f"FAIL {r.path}: {problem}")
    return "\n".join(lines)
