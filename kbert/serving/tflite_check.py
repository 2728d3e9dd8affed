"""The validator's TFLite checks: id-input files and string-input files in LiteRT, MediaPipe files in MediaPipe.

See `kbert.serving.validate` for the rules and the entry point.
"""

import os

import numpy as np

from kbert.serving.validate import (
    SAMPLE_TEXTS,
    ArtifactReport,
    artifact_size,
    compare_arrays,
    judge,
    model_config,
    pack_texts,
    reference_outputs,
)

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

    report = ArtifactReport(path, "TFLite", artifact_size(path))
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

    report = ArtifactReport(path, "TFLite text-in", artifact_size(path))
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

    report = ArtifactReport(path, "MediaPipe TextClassifier", artifact_size(path))
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
