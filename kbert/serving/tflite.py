"""TFLite export of the token-id encoder, TFLite builtin ops only."""

import tempfile

import keras
import numpy as np
import tensorflow as tf

from kbert.models.bert_encoder import INPUT_NAMES
from kbert.serving.saved_model import compare_outputs

SIGNATURE = "serving_token_ids"


def export_tflite(encoder, path, sequence_length=128, batch_size=1):
    """Converts `encoder` to a TFLite flatbuffer with fixed-shape int32 inputs.

    Inputs (signature `serving_token_ids`): `token_ids`, `segment_ids`,
    `padding_mask`, int32 `(batch_size, sequence_length)`. Outputs: float32
    `pooled_output` `(batch_size, hidden_size)` and `sequence_output`
    `(batch_size, sequence_length, hidden_size)`. Conversion goes through
    `keras.export.ExportArchive` (which keeps Keras 3 variables) and
    `tf.lite.TFLiteConverter` restricted to `TFLITE_BUILTINS`, so the file runs
    on the stock TFLite runtime without Flex ops.

    Args:
        encoder: `kbert.models.BertEncoder` (float32 weights recommended).
        path: str, output `.tflite` file.
        sequence_length: int <= `max_position_embeddings`.
        batch_size: int, fixed batch dimension.

    Returns:
        bytes of the model (also written to `path`).

    Raises:
        ValueError: `sequence_length` above `max_position_embeddings`.
        tf.lite ConverterError: an op outside the TFLite builtins.
    """
    limit = encoder.bert_config.max_position_embeddings
    if sequence_length > limit:
        raise ValueError(
            f"sequence_length={sequence_length} exceeds max_position_embeddings={limit}."
        )

    def serve(token_ids, segment_ids, padding_mask):
        outputs = encoder(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
            training=False,
        )
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    specs = [tf.TensorSpec([batch_size, sequence_length], tf.int32, name=n) for n in INPUT_NAMES]
    return convert_to_tflite(encoder, serve, specs, SIGNATURE, path)


def convert_to_tflite(model, function, input_signature, signature, path):
    """Converts `function` (tracking `model`'s variables) to a TFLite file, builtin ops only.

    Goes through `keras.export.ExportArchive` (which keeps Keras 3
    variables) and `tf.lite.TFLiteConverter` restricted to `TFLITE_BUILTINS`,
    so the file runs on the stock TFLite runtime without Flex ops.

    Args:
        model: the Keras model whose variables `function` reads.
        function: callable of the `input_signature` tensors -> dict of outputs.
        input_signature: list of `tf.TensorSpec` with names (fixed shapes).
        signature: str, the signature key in the TFLite file.
        path: str, the `.tflite` file to write.

    Returns:
        bytes, the flatbuffer (also written to `path`).

    Raises:
        tf.lite ConverterError: an op outside the TFLite builtins.
    """
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(signature, function, input_signature=input_signature)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[signature]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return flatbuffer


def run_tflite(path, features):
    """Runs a TFLite file from `export_tflite` on a dict of int32 arrays; returns outputs."""
    interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner(SIGNATURE)
    return runner(**{name: np.asarray(features[name], np.int32) for name in INPUT_NAMES})


def verify_tflite(path, encoder, features, atol=1e-4):
    """Compares a TFLite file with `encoder` on `features` (int32 arrays of the file's shape).

    Returns:
        float, the largest absolute difference over `pooled_output` and the
        real-token rows of `sequence_output`.

    Raises:
        ExportVerificationError: a difference above `atol`.
    """
    actual = run_tflite(path, features)
    expected = {
        k: keras.ops.convert_to_numpy(v).astype(np.float32)
        for k, v in encoder({k: features[k] for k in INPUT_NAMES}, training=False).items()
    }
    return compare_outputs(actual, expected, features["padding_mask"], atol, f"TFLite file {path}")
