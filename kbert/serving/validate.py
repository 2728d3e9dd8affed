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
  dynamic-range int8, int8_selective) is read off the file's layers and sets
  the tolerance (`TOLERANCES`; `tflite_recipes.recipe_of`). String-input
  files run with tensorflow-text's kernels; MediaPipe-format files also in
  MediaPipe's `TextClassifier`.

This module holds what every check shares (reports, references, tolerances)
and the entry point; the runs themselves are in `saved_model_check` and
`tflite_check`.

Each artifact gets a row: size, max abs difference, agreement (pooled-output
cosine for encoders, label agreement for classifiers), median batch-1 latency
over `runs` calls, and pass/fail. Tolerances follow issue 8: a SavedModel
within 1e-5 of Keras, float32 TFLite within 1e-4, float16 and dynamic-range
int8 pooled cosine >= 0.99 (labels >= 97%), `int8_selective` cosine >= 0.98.
"""

import dataclasses
import os

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


def artifact_size(path):
    """Bytes on disk of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def model_config(model):
    """The `BertConfig` of an encoder or of a task model's encoder."""
    return getattr(model, "bert_config", None) or model.encoder.bert_config


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
    from kbert.serving.saved_model_check import validate_saved_model
    from kbert.serving.tflite_check import (
        custom_ops,
        has_task_metadata,
        validate_task_file,
        validate_text_tflite,
        validate_tflite,
    )

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
                artifact, "TFLite" if kind == "tflite" else "SavedModel", artifact_size(artifact),
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
