"""SavedModel export for TF Serving: raw-text and token-id signatures."""

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kbert.models.bert_encoder import INPUT_NAMES
from kbert.text.bert_packer import BertPacker

TEXT_SIGNATURE = "serving_default"
TOKEN_IDS_SIGNATURE = "serving_token_ids"
WORDPIECES_SIGNATURE = "serving_wordpieces"


class ExportVerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model it came from."""


class _VocabularyTable(tf.Module):
    """id -> token table read from `vocab.txt`; makes the file a SavedModel asset."""

    def __init__(self, vocab_path):
        super().__init__(name="vocabulary")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_path,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )


def check_export_target(model, sequence_length, version, path):
    """Validates a task-model export before anything is written.

    Raises:
        ValueError: `sequence_length` above the encoder's
            `max_position_embeddings`, `version` < 1, or an existing `path`
            (a version is never overwritten).
    """
    limit = model.encoder.bert_config.max_position_embeddings
    if sequence_length > limit:
        raise ValueError(
            f"sequence_length={sequence_length} exceeds max_position_embeddings={limit}."
        )
    if version < 1:
        raise ValueError(f"version={version} must be >= 1.")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; export to a new version or remove it.")


def text_input_specs(*names):
    """Input specs of text signatures: tf.string of *unknown* rank, checked at run time.

    A signature declared as `(None,)` does not stop a client from sending a
    scalar or a matrix (TensorFlow does not check shapes of signature
    inputs), and the tokenizer kernels then crash the process or read only
    part of the batch. Declaring the rank unknown keeps the check in the
    graph (`check_text_batch`), where it cannot be folded away.
    """
    return [tf.TensorSpec(None, tf.string, name=name) for name in names]


def check_text_batch(**texts):
    """Checks that each input is a 1-D batch of strings of one common size; returns them.

    Args:
        **texts: input name -> tf.string tensor of unknown rank (see `text_input_specs`).

    Returns:
        list of the tensors, with static shape `(batch_size,)`.

    Raises:
        tf.errors.InvalidArgumentError (at run time): an input that is not
            1-D (its name, the expected shape and its shape in the message),
            or inputs of different sizes.
    """
    checked = []
    for name, text in texts.items():
        ok = tf.debugging.Assert(
            tf.equal(tf.rank(text), 1),
            [f"`{name}` must be a batch of strings of shape (batch_size,); received shape",
             tf.shape(text)],
        )
        with tf.control_dependencies([ok]):
            # After the check, so a bad request fails with the message above.
            checked.append(tf.reshape(text, [-1]))
    if len(checked) == 2:
        names = list(texts)
        same = tf.debugging.assert_equal(
            tf.size(checked[0]), tf.size(checked[1]),
            message=f"`{names[0]}` and `{names[1]}` must hold the same number of strings",
        )
        with tf.control_dependencies([same]):
            checked = [tf.identity(t) for t in checked]
    return checked


def text_to_inputs(tokenizer, packer, text):
    """Tokenizes and packs a batch of strings (single segment).

    Returns:
        (features, num_wordpieces): the packed int32 dict of `INPUT_NAMES`,
        each `(batch_size, sequence_length)`, and int32 `(batch_size,)` counts
        of WordPieces before truncation (more than `sequence_length - 2` means
        the text was cut).
    """
    ids = tokenizer(text)
    return packer(ids), tf.cast(ids.row_lengths(), tf.int32)


def export_saved_model(encoder, tokenizer, vocab_path, export_base, sequence_length=128, version=1):
    """Writes `encoder` + in-graph tokenizer as a SavedModel in TF Serving's layout.

    The folder `export_base/version/` holds three signatures:
      * `serving_default`: `text` tf.string `(batch,)` -> float32
        `pooled_output` `(batch, hidden_size)`, `sequence_output`
        `(batch, sequence_length, hidden_size)`, int32 `padding_mask`
        `(batch, sequence_length)`, int32 `num_wordpieces` `(batch,)` (the
        untruncated length, so callers can see truncation). Text is
        tokenized in the graph and packed as `[CLS] text [SEP]`, truncated to
        `sequence_length`.
      * `serving_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask`
        `(batch, length)` with length <= `max_position_embeddings` -> float32
        `pooled_output`, `sequence_output`.
      * `serving_wordpieces`: `text` -> the packed `token_ids` and their
        `wordpieces` strings, read from the `vocab.txt` asset.
    The vocabulary is copied into `assets/`, and the tokenizer's model is a
    constant of the graph, so the folder works after being moved and after the
    original vocabulary is deleted. Loading needs `import tensorflow_text`.

    Args:
        encoder: `kbert.models.BertEncoder` (any dtype policy; outputs are
            cast to float32).
        tokenizer: `kbert.text.BertTokenizer` built from `vocab_path`.
        vocab_path: str, the `vocab.txt` of `tokenizer`.
        export_base: str, model base folder for TF Serving.
        sequence_length: int, packed length of the text signature.
        version: int > 0, the version subfolder.

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: `sequence_length` above the encoder's
            `max_position_embeddings`, `version < 1`, or a vocabulary that
            does not match the tokenizer.
    """
    config = encoder.bert_config
    if sequence_length > config.max_position_embeddings:
        raise ValueError(
            f"sequence_length={sequence_length} exceeds the encoder's "
            f"max_position_embeddings={config.max_position_embeddings}."
        )
    if version < 1:
        raise ValueError(f"version={version} must be >= 1.")
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the encoder's "
            f"vocab_size is {config.vocab_size}."
        )
    special = tokenizer.special_token_ids
    packer = BertPacker(sequence_length, special["cls"], special["sep"], special["pad"])
    vocabulary = _VocabularyTable(vocab_path)

    def encode(features):
        outputs = encoder(features, training=False)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    def serve_text(text):
        (text,) = check_text_batch(text=text)
        features, num_wordpieces = text_to_inputs(tokenizer, packer, text)
        outputs = encode(features)
        outputs["padding_mask"] = features["padding_mask"]
        outputs["num_wordpieces"] = num_wordpieces
        return outputs

    def serve_token_ids(token_ids, segment_ids, padding_mask):
        return encode(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        )

    def serve_wordpieces(text):
        (text,) = check_text_batch(text=text)
        features, _ = text_to_inputs(tokenizer, packer, text)
        ids = features["token_ids"]
        return {"token_ids": ids, "wordpieces": vocabulary.table.lookup(tf.cast(ids, tf.int64))}

    text_spec = text_input_specs("text")
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.track(vocabulary)
    archive.add_endpoint(TEXT_SIGNATURE, serve_text, input_signature=text_spec)
    archive.add_endpoint(
        TOKEN_IDS_SIGNATURE,
        serve_token_ids,
        input_signature=[tf.TensorSpec([None, None], tf.int32, name=n) for n in INPUT_NAMES],
    )
    archive.add_endpoint(WORDPIECES_SIGNATURE, serve_wordpieces, input_signature=text_spec)
    path = os.path.join(export_base, str(version))
    archive.write_out(path, verbose=False)
    return path


_RELOAD_SCRIPT = r"""
import json
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the SavedModel uses
path, signature, inputs_file, out = sys.argv[1:5]
with open(inputs_file, encoding="utf-8") as f:
    inputs = json.load(f)
loaded = tf.saved_model.load(path)
function = loaded.signatures[signature]
specs = function.structured_input_signature[1]
result = function(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
decode = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[str])
arrays = {}
for k, v in result.items():
    value = v.numpy()
    arrays[k] = decode(value) if v.dtype == tf.string and value.size else value.astype(str) if v.dtype == tf.string else value
np.savez(out, **arrays)
"""


def run_saved_model_in_fresh_process(path, inputs, signature=TEXT_SIGNATURE):
    """Loads the SavedModel at `path` in a new Python process and runs one signature.

    This is how TF Serving sees the folder: nothing of the exporting process
    (its Python objects, the original vocabulary file) is available.

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
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file = os.path.join(tmp, "inputs.json")
        out = os.path.join(tmp, "out.npz")
        with open(inputs_file, "w", encoding="utf-8") as f:
            json.dump(inputs, f)
        proc = subprocess.run(
            [sys.executable, "-c", _RELOAD_SCRIPT, path, signature, inputs_file, out],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise ExportVerificationError(
                f"Loading {path} in a fresh process failed:\n{proc.stderr[-4000:]}"
            )
        with np.load(out) as result:
            return dict(result)


def verify_saved_model(path, encoder, tokenizer, texts, sequence_length=128, atol=1e-4):
    """Checks a SavedModel from `export_saved_model` against the Keras model.

    Runs `serving_default` in a fresh process (as TF Serving would load it)
    and compares `pooled_output` and `sequence_output` (on real tokens) with
    `encoder` on the same texts.

    Returns:
        float, the largest absolute difference.

    Raises:
        ExportVerificationError: a difference above `atol`, or a load failure.
    """
    special = tokenizer.special_token_ids
    packer = BertPacker(sequence_length, special["cls"], special["sep"], special["pad"])
    features, _ = text_to_inputs(tokenizer, packer, tf.constant(texts))
    expected = {
        k: keras.ops.convert_to_numpy(v).astype(np.float32)
        for k, v in encoder(features, training=False).items()
    }
    actual = run_saved_model_in_fresh_process(path, texts)
    return compare_outputs(actual, expected, features["padding_mask"], atol, f"SavedModel {path}")


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
