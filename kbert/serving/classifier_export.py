"""Exports of a fine-tuned `BertClassifier`: text-in SavedModel and MediaPipe-style TFLite.

SavedModel (TF Serving layout `BASE/VERSION/`), signatures:
  * `serving_default`: `text` tf.string `(batch,)` (and `text_pair` for
    two-segment tasks) -> float32 `probabilities` `(batch, num_classes)`,
    tf.string `label` `(batch,)` (the class name from the label list),
    int32 `label_id` `(batch,)`, float32 `logits`, int32 `num_wordpieces`
    `(batch,)` (pieces of all segments before trimming) and bool
    `truncated` `(batch,)` (the pieces exceeded the
    `sequence_length - num_segments - 1` left by `[CLS]` and the `[SEP]`s,
    so the text was cut). For regression (one output): float32 `score`
    `(batch,)`, `num_wordpieces` and `truncated`.
  * `serving_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask`
    `(batch, length)`, length <= `max_position_embeddings` ->
    `probabilities`, `logits` (or `score`).
  * `serving_token_ids_int64`: the same for int64 ids (NumPy arrays from
    Python also work with `serving_token_ids`; int64 tensors need this one).
Requests are checked in the graph and refused with
`tf.errors.InvalidArgumentError` naming the input: text that is not a 1-D
batch of strings, `text` and `text_pair` of different sizes, ids not of
rank 2 or of different shapes, a length above `max_position_embeddings`.
Each weight is stored once, and the version folder is written atomically,
with a TF Serving warmup request for every signature in
`assets.extra/tf_serving_warmup_requests` (`kbert.serving.warmup`).
TFLite (TFLite builtin ops only): int32 `ids`, `mask`, `segment_ids`
`(1, sequence_length)` -> float32 `probabilities` `(1, num_classes)` in
signature `serving_default`: the input names of the TFLite Task Library's
and MediaPipe Tasks' BERT classifiers (MediaPipe Model Maker's export).
The shapes are fixed; `run_classifier_tflite` refuses other lengths with a
ValueError naming the file's.
"""

import os

import numpy as np
import tensorflow as tf

from kbert.serving.saved_model import (
    TEXT_SIGNATURE,
    WARMUP_SECOND_TEXTS,
    WARMUP_TEXTS,
    ExportVerificationError,
    add_token_ids_endpoints,
    check_export_target,
    check_text_batch,
    new_export_archive,
    packed_sample_ids,
    run_saved_model_in_fresh_process,
    text_input_specs,
    truncation_outputs,
    write_archive,
)
from kbert.serving.tflite import (
    check_tflite_inputs,
    check_tflite_target,
    convert_to_tflite,
    litert_interpreter,
    signature_runner,
)
from kbert.text.bert_text_preprocessor import BertTextPreprocessor

TFLITE_SIGNATURE = "serving_default"
# TFLite Task Library / MediaPipe Tasks input names -> kbert names.
TFLITE_INPUT_NAMES = {"ids": "token_ids", "mask": "padding_mask", "segment_ids": "segment_ids"}


def _head_outputs(model, features, regression):
    logits = tf.cast(model(features, training=False), tf.float32)
    if regression:
        return {"score": logits[:, 0]}
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


def export_classifier_saved_model(model, tokenizer, export_base, label_list=None,
                                  sequence_length=128, num_segments=1, version=1):
    """Writes a `BertClassifier` with its tokenizer as a TF Serving SavedModel.

    Args:
        model: `kbert.models.BertClassifier` (float32 weights recommended).
        tokenizer: the `kbert.text.BertTokenizer` it was trained with.
        export_base: str, the model base folder (TF Serving's `--model_base_path`).
        label_list: list of str class names (id = index); None for regression.
        sequence_length: int <= `max_position_embeddings`, the packed length.
        num_segments: 1 (`text`) or 2 (`text`, `text_pair`).
        version: int >= 1, the version subfolder.

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: a label list that does not match the model's outputs,
            `sequence_length` above `max_position_embeddings`, a bad
            `num_segments` or `version`, or an existing version folder (all
            before anything is written; a later failure leaves nothing at
            `export_base/version`).
    """
    regression = model.num_classes == 1
    if not regression and (label_list is None or len(label_list) != model.num_classes):
        raise ValueError(
            f"label_list {label_list} must name the model's {model.num_classes} classes."
        )
    if not regression:
        names = [str(x) for x in label_list]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"label_list {label_list} names {repeated} more than once.")
    if num_segments not in (1, 2):
        raise ValueError(f"num_segments={num_segments} must be 1 or 2.")
    path = os.path.join(export_base, str(version))
    check_export_target(model, sequence_length, version, path)
    preprocessor = BertTextPreprocessor(tokenizer, sequence_length)
    labels = None if regression else tf.constant([str(x) for x in label_list])

    def serve_text(*texts):
        texts = check_text_batch(**dict(zip(names, texts)))
        features = preprocessor(tuple(texts) if len(texts) == 2 else texts[0])
        outputs = _head_outputs(model, features, regression)
        pieces = sum(tokenizer(t).row_lengths() for t in texts)
        outputs.update(truncation_outputs(pieces, sequence_length, len(texts)))
        if not regression:
            label_id = tf.argmax(outputs["probabilities"], axis=-1, output_type=tf.int32)
            outputs["label_id"] = label_id
            outputs["label"] = tf.gather(labels, label_id)
        return outputs

    names = ["text", "text_pair"][:num_segments]
    archive = new_export_archive(model, preprocessor)
    archive.add_endpoint(
        TEXT_SIGNATURE, serve_text,
        input_signature=text_input_specs(*names),
    )
    add_token_ids_endpoints(
        archive, lambda features: _head_outputs(model, features, regression),
        model.encoder.bert_config,
    )
    samples = {"text": list(WARMUP_TEXTS), "text_pair": list(WARMUP_SECOND_TEXTS)}
    samples = {name: samples[name] for name in names}
    features = preprocessor(tuple(samples.values()) if num_segments == 2 else samples["text"])
    requests = [(TEXT_SIGNATURE, samples), *packed_sample_ids(features)]
    return write_archive(archive, path, requests)


def export_classifier_tflite(model, path, sequence_length=128, recipe="float32",
                             representative_data=None):
    """Converts a `BertClassifier` to a TFLite file with MediaPipe's input names.

    Inputs (signature `serving_default`): int32 `ids`, `mask`, `segment_ids`
    `(1, sequence_length)`, bound by name; output float32 `probabilities`
    `(1, num_classes)` (`score` `(1,)` for regression), under every recipe.
    TFLite builtin ops only. Written atomically (a failure leaves no file at
    `path`).

    Args:
        model: `kbert.models.BertClassifier`.
        path: str, the `.tflite` file to write.
        sequence_length: int <= `max_position_embeddings`.
        recipe: str, a key of `kbert.serving.tflite_recipes.TFLITE_RECIPES`:
            `float32`, `float16`, `dynamic_int8` or `int8_selective`.
        representative_data: for `int8_selective` only (required there): a
            dict of int arrays `(num_examples, sequence_length)` with kbert
            names `token_ids`, `segment_ids`, `padding_mask` (as
            `run_classifier_tflite` takes them; e.g. `BertTextPreprocessor`
            on a few hundred training texts), or a list of such dicts.

    Returns:
        bytes, the flatbuffer (also written to `path`).

    Raises:
        ValueError: `sequence_length` above `max_position_embeddings`, an
            unknown recipe, missing or malformed `representative_data` (before
            anything is converted or written).
        TypeError: representative data that is not dicts of integer arrays.
    """
    check_tflite_target(model, sequence_length)
    regression = model.num_classes == 1

    def serve(ids, mask, segment_ids):
        features = {"token_ids": ids, "segment_ids": segment_ids, "padding_mask": mask}
        outputs = _head_outputs(model, features, regression)
        return {"score": outputs["score"]} if regression else {
            "probabilities": outputs["probabilities"]
        }

    specs = [tf.TensorSpec([1, sequence_length], tf.int32, name=n) for n in TFLITE_INPUT_NAMES]
    return convert_to_tflite(model, serve, specs, TFLITE_SIGNATURE, path, recipe,
                             representative_data, names=TFLITE_INPUT_NAMES)


def run_classifier_tflite(path, features):
    """Runs a file from `export_classifier_tflite` row by row on packed features.

    Args:
        path: str, the `.tflite` file.
        features: dict of int32 `(batch, sequence_length)` arrays with kbert
            names (`token_ids`, `segment_ids`, `padding_mask`), the file's length.

    Returns:
        float32 array: `(batch, num_classes)` probabilities or `(batch,)` scores.

    Raises:
        ValueError: features of another length than the file's (both named,
            see `check_tflite_inputs`), or a missing input.
        TypeError: non-integer ids.
    """
    interpreter = litert_interpreter(model_path=path)
    runner = signature_runner(interpreter, TFLITE_SIGNATURE, path, "an id-input classifier file")
    arrays = check_tflite_inputs(
        path, runner.get_input_details(), features, TFLITE_INPUT_NAMES, any_batch=True
    )
    rows = []
    for i in range(len(arrays["ids"])):
        result = runner(**{name: array[i:i + 1] for name, array in arrays.items()})
        rows.append(result["score"] if "score" in result else result["probabilities"])
    return np.concatenate(rows, axis=0)


def verify_classifier_exports(model, tokenizer, texts, saved_model_path=None, tflite_path=None,
                              label_list=None, text_pairs=None, sequence_length=128, atol=1e-4):
    """Checks the exports of a classifier against the Keras model on `texts`.

    The SavedModel runs in a fresh process (as TF Serving loads it); the
    TFLite file in the TFLite interpreter. Both must agree with `model` on
    every predicted label and within `atol` on probabilities (scores).

    Args:
        model: the `BertClassifier` that was exported.
        tokenizer: its `BertTokenizer`.
        texts: list of str (and `text_pairs` for two-segment models).
        saved_model_path, tflite_path: str paths of the artifacts to check.
        label_list: class names (None for regression).
        sequence_length: the packed length both artifacts use.
        atol: float, the largest allowed absolute difference.

    Returns:
        dict artifact -> {"max_abs_diff", "label_agreement"}.

    Raises:
        ExportVerificationError: a difference above `atol`, a label that
            differs, or an artifact that fails to load.
    """
    segments = (texts,) if text_pairs is None else (texts, text_pairs)
    preprocessor = BertTextPreprocessor(tokenizer, sequence_length)
    features = {
        k: v.numpy()
        for k, v in preprocessor(tuple(segments) if len(segments) == 2 else texts).items()
    }
    regression = model.num_classes == 1
    expected = _head_outputs(model, features, regression)
    expected = (expected["score"] if regression else expected["probabilities"]).numpy()
    report = {}

    def compare(name, actual, actual_labels=None):
        diff = float(np.abs(actual - expected).max())
        agreement = 1.0
        if not regression:
            predicted = actual.argmax(-1) if actual_labels is None else actual_labels
            agreement = float(np.mean(predicted == expected.argmax(-1)))
        report[name] = {"max_abs_diff": diff}
        if not regression:
            report[name]["label_agreement"] = agreement
        if not diff <= atol or agreement < 1.0:
            raise ExportVerificationError(
                f"{name} differs from the Keras model: max abs difference {diff:.3g} "
                f"(atol {atol}), label agreement {agreement:.4f}."
            )

    if saved_model_path:
        inputs = {"text": list(texts)}
        if text_pairs is not None:
            inputs["text_pair"] = list(text_pairs)
        out = run_saved_model_in_fresh_process(saved_model_path, inputs)
        if regression:
            compare(f"SavedModel {saved_model_path}", out["score"])
        else:
            names = [str(x) for x in label_list]
            returned = [names.index(str(x)) for x in out["label"]]
            compare(f"SavedModel {saved_model_path}", out["probabilities"], np.array(returned))
    if tflite_path:
        compare(f"TFLite {tflite_path}", run_classifier_tflite(tflite_path, features))
    return report
