"""String-input TFLite: the WordPiece tokenizer and the packer inside the file.

A phone app hands the file raw text; the file tokenizes it with
tensorflow-text's TFLite kernels (`FastBertNormalize`,
`FastWordpieceTokenizeWithOffsets`, registered by
`tensorflow_text.tflite_registrar` in Python and by tensorflow-text's
`fast_bert_normalizer_tflite` / `fast_wordpiece_tokenizer_tflite` libraries
on a device), packs `[CLS] text [SEP]` (or `[CLS] text [SEP] text_pair [SEP]`)
to a fixed length with plain TFLite builtin ops, and runs the model. No Flex
(select TensorFlow) ops: the only custom ops are those two.

The packing is written densely on the tokenizer's flat ids and row splits
(`pack_dense`). `kbert.text.BertPacker` (tensorflow-text's
`RoundRobinTrimmer`, `combine_segments`, `pad_model_inputs`) converts to three
more custom ops, `TFText>RoundRobinTrim`, `RaggedTensorToTensor` and
`RaggedGather`, and tensorflow-text 2.20's registrar has no kernel for
`RaggedGather` ("Encountered unresolved custom op: RaggedGather").

On-device normalisation is `FastBertTokenizer`'s own
(`lower_case_nfd_strip_accents=True` for uncased vocabularies, none for cased
ones), which applies NFKC case folding; kbert's `BertTokenizer` normalises
with separate TensorFlow ops instead (BERT's exact rules; not TFLite ops).
The two give other ids on the characters listed in
`docs/tflite_tokenizer_differences.md` and on control characters (kbert
deletes them, the device op splits words there); `tokenizer_differences`
finds them in given texts, and `verify_text_tflite` accepts id differences
only on texts that contain them.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kbert.models import BertClassifier, BertEncoder
from kbert.serving.classifier_export import _head_outputs
from kbert.serving.saved_model import (
    ExportVerificationError,
    atomic_output,
    compare_outputs,
    new_export_archive,
)
from kbert.serving.tflite import check_tflite_target
from kbert.serving.tflite_text_runtime import (  # noqa: F401  (re-exported)
    CHUNK,
    CUSTOM_OPS,
    SIGNATURE,
    TEXT_INPUT_NAMES,
    _check_custom_ops,
    file_custom_ops,
    run_text_tflite,
    text_tflite_interpreter,
)
from kbert.serving.tflite_text_packing import (
    device_tokenizer,
    pack_dense,
    tokenizer_differences,
)
from kbert.text.bert_packer import min_sequence_length
from kbert.text.bert_text_preprocessor import BertTextPreprocessor

_PACKED_NAMES = ("token_ids", "segment_ids", "padding_mask")


def export_text_tflite(model, tokenizer, path, sequence_length=128, num_segments=1,
                       batch_size=None):
    """Writes a TFLite file that takes raw text: tokenizer, packer and model inside.

    Signature `serving_default`:
      * inputs: tf.string `text` `(batch,)` (and `text_pair` `(batch,)`
        with `num_segments=2`), UTF-8; any batch size by default (a dynamic
        batch dimension; `run_text_tflite` resizes), or `batch_size` fixed.
      * outputs, every model: int32 `token_ids`, `segment_ids`,
        `padding_mask` `(batch, sequence_length)` (the packed inputs, to see
        what the model saw), int32 `num_wordpieces` `(batch,)` (pieces of
        all segments before truncation) and bool `truncated` `(batch,)`
        (they exceeded the `sequence_length - num_segments - 1` left by the
        special tokens, so the text was cut); as the SavedModel's text
        signatures.
      * `BertEncoder`: float32 `pooled_output` `(batch, hidden_size)`,
        `sequence_output` `(batch, sequence_length, hidden_size)`.
      * `BertClassifier`: float32 `probabilities` `(batch, num_classes)`
        (for regression, `score` `(batch,)`).
    Text handling: empty text -> `[CLS] [SEP]`; a word with invalid UTF-8 ->
    `[UNK]` (as kbert's `BertTokenizer`); special-looking text such as
    "[MASK]" is ordinary text (`[`, `mask`, `]`), never a special id.
    Ops: TFLite builtins plus the custom ops in `CUSTOM_OPS` (no Flex); the
    file is loaded with those kernels registered before it is written, so a
    file that needs any other op is never written. Written atomically
    (`kbert.serving.archive.atomic_output`).

    Args:
        model: `kbert.models.BertEncoder` or `kbert.models.BertClassifier`
            (float32 weights recommended).
        tokenizer: the `kbert.text.BertTokenizer` of the model's vocabulary;
            its `lowercase` selects the device normalisation.
        path: str, the `.tflite` file to write.
        sequence_length: int, the packed length L: >= 3 (>= 5 for pairs) and
            <= `max_position_embeddings`.
        num_segments: 1 (`text`) or 2 (`text`, `text_pair`).
        batch_size: None (any batch size) or an int >= 1, a fixed batch
            dimension (for runtimes that need static shapes).

    Returns:
        bytes, the flatbuffer (also written to `path`).

    Raises:
        ValueError: a model that is neither an encoder nor a classifier, a
            tokenizer whose vocabulary size is not the model's, a bad
            `num_segments`, `sequence_length` or `batch_size` (all before
            anything is written).
        ImportError: `ai-edge-litert` (which checks the file) is missing.
        ExportVerificationError: the converted file needs an op outside the
            TFLite builtins and `CUSTOM_OPS` (nothing is written).
    """
    if not isinstance(model, (BertEncoder, BertClassifier)):
        raise ValueError(  # noqa: TRY004 (the documented error of a wrong argument)
            "export_text_tflite takes a kbert BertEncoder or BertClassifier; received "
            f"{type(model).__name__}."
        )
    if num_segments not in (1, 2):
        raise ValueError(f"num_segments={num_segments!r} must be 1 or 2.")
    check_tflite_target(model, sequence_length, 1 if batch_size is None else batch_size)
    minimum = min_sequence_length(num_segments)
    if sequence_length < minimum:
        raise ValueError(
            f"sequence_length={sequence_length} is too short for {num_segments} segments: "
            f"it must be >= {minimum}."
        )
    encoder = getattr(model, "encoder", model)
    if tokenizer.vocab_size != encoder.bert_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{encoder.bert_config.vocab_size}."
        )
    wordpiece = device_tokenizer(tokenizer)
    special = tokenizer.special_token_ids

    def serve(*texts):
        packed = pack_dense([wordpiece.tokenize(t) for t in texts], sequence_length,
                            special["cls"], special["sep"], special["pad"])
        features = {name: packed[name] for name in _PACKED_NAMES}
        if isinstance(model, BertClassifier):
            regression = model.num_classes == 1
            head = _head_outputs(model, features, regression)
            outputs = {"score": head["score"]} if regression else {
                "probabilities": head["probabilities"]}
        else:
            outputs = {k: tf.cast(v, tf.float32)
                       for k, v in model(features, training=False).items()}
        outputs.update(packed)
        return outputs

    specs = [tf.TensorSpec([batch_size], tf.string, name=name)
             for name in TEXT_INPUT_NAMES[:num_segments]]
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = new_export_archive(model, wordpiece)
        archive.add_endpoint(SIGNATURE, serve, input_signature=specs)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = True  # the tensorflow-text ops, checked below
        flatbuffer = converter.convert()
    _check_custom_ops(flatbuffer, num_segments)
    with atomic_output(path) as temporary, open(temporary, "wb") as f:
        f.write(flatbuffer)
        f.flush()
        os.fsync(f.fileno())
    return flatbuffer


def verify_text_tflite(path, model, tokenizer, texts, text_pairs=None, atol=1e-4):
    """Checks a string-input TFLite file against kbert's tokenizer and the Keras model.

    Two comparisons:
      1. ids: the file's `token_ids`, `segment_ids`, `padding_mask` and
         `num_wordpieces` against kbert's `BertTokenizer` + `BertPacker`
         (what the SavedModel's text signature computes) at the file's
         length. A row may differ only if its text holds characters listed
         by `tokenizer_differences`; such rows are reported.
      2. outputs: the file's outputs against `model` run in Keras on the
         file's own packed ids: `pooled_output` and real-token rows of
         `sequence_output` (encoder) or `probabilities` / `score`
         (classifier) within `atol`, and every predicted label equal.

    Args:
        path: str, a file from `export_text_tflite`.
        model: the `BertEncoder` or `BertClassifier` that was exported.
        tokenizer: its `BertTokenizer`.
        texts: list of str (or bytes); `text_pairs` for a pair file.
        atol: float, the largest allowed absolute difference.

    Returns:
        dict: `rows` (int), `max_abs_diff` (float), `label_agreement`
        (float, classifiers), `id_differences` (list of
        `(row, characters)` for rows whose ids differ from kbert's on
        documented characters).

    Raises:
        ExportVerificationError: ids that differ on a row without such
            characters (the first rows, their texts and both id rows named),
            an output difference above `atol`, or a differing label.
        ValueError, TypeError: bad `texts` (see `run_text_tflite`).
    """
    actual = run_text_tflite(path, texts, text_pairs)
    length = actual["token_ids"].shape[1]
    segments = [list(texts)] + ([list(text_pairs)] if text_pairs is not None else [])
    preprocessor = BertTextPreprocessor(tokenizer, length)
    expected_ids = {k: v.numpy() for k, v in preprocessor(
        tuple(tf.constant(s) for s in segments) if len(segments) == 2
        else tf.constant(segments[0])).items()}
    expected_ids["num_wordpieces"] = sum(
        tokenizer(tf.constant(s)).row_lengths().numpy() for s in segments)
    differs = np.zeros(len(texts), dtype=bool)
    for name, value in expected_ids.items():
        differs |= (actual[name] != value).reshape(len(texts), -1).any(axis=1)
    characters = [sorted(set().union(*c)) for c in zip(
        *(tokenizer_differences(tokenizer, s) for s in segments))]
    unexplained = [i for i in np.flatnonzero(differs) if not characters[i]]
    if unexplained:
        details = "; ".join(
            f"row {i} {segments[0][i]!r}: file {actual['token_ids'][i].tolist()}, "
            f"kbert {expected_ids['token_ids'][i].tolist()}" for i in unexplained[:3])
        raise ExportVerificationError(
            f"TFLite file {path} tokenizes {len(unexplained)} of {len(texts)} texts unlike "
            f"kbert's BertTokenizer, with no documented character to explain it: {details}")
    report = {"rows": len(texts),
              "id_differences": [(int(i), characters[i]) for i in np.flatnonzero(differs)]}
    features = {name: actual[name] for name in _PACKED_NAMES}
    expected = _keras_outputs(model, features)
    what = f"TFLite file {path}"
    if isinstance(model, BertClassifier):
        name = "score" if model.num_classes == 1 else "probabilities"
        diff = float(np.abs(actual[name] - expected[name]).max())
        report["max_abs_diff"] = diff
        agreement = 1.0
        if name == "probabilities":
            agreement = float(np.mean(actual[name].argmax(-1) == expected[name].argmax(-1)))
            report["label_agreement"] = agreement
        if not diff <= atol or agreement < 1.0:
            raise ExportVerificationError(
                f"{what} differs from the Keras model: max abs difference {diff:.3g} "
                f"(atol {atol}), label agreement {agreement:.4f}.")
    else:
        report["max_abs_diff"] = compare_outputs(actual, expected, features["padding_mask"],
                                                 atol, what)
    return report


def _keras_outputs(model, features):
    """`model`'s float32 NumPy outputs on packed features, `CHUNK` rows at a time.

    Returns:
        dict: `pooled_output`, `sequence_output` (encoder), or
        `probabilities` / `score` (classifier).
    """
    chunks = []
    for begin in range(0, len(features["token_ids"]), CHUNK):
        rows = {k: v[begin:begin + CHUNK] for k, v in features.items()}
        if isinstance(model, BertClassifier):
            outputs = _head_outputs(model, rows, model.num_classes == 1)
            outputs.pop("logits", None)
        else:
            outputs = model(rows, training=False)
        chunks.append({k: keras.ops.convert_to_numpy(v).astype(np.float32)
                       for k, v in outputs.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
