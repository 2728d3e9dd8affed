"""TFLite export of the token-id encoder, TFLite builtin ops only, in each named recipe."""

import numbers
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kbert.models.input_checks import INPUT_NAMES
from kbert.serving.saved_model import (
    atomic_output,
    check_sequence_length,
    compare_outputs,
    new_export_archive,
)
from kbert.serving.tflite_recipes import (
    check_recipe,
    convert_saved_model,
    representative_dataset,
)

SIGNATURE = "serving_token_ids"


def signature_runner(interpreter, signature, path, what):
    """`interpreter`'s runner of `signature`, or a ValueError saying what the file is instead.

    Args:
        interpreter: a LiteRT interpreter of the file.
        signature: str, the signature the caller's kind of file has.
        path: str, the file (named in the error).
        what: str, the kind of file the caller runs (e.g. "an id-input encoder file").

    Raises:
        ValueError: the file has no such signature (its signatures and their
            inputs are named, so a string-input file given to an id runner,
            or the reverse, says so).
    """
    signatures = interpreter.get_signature_list()
    if signature not in signatures:
        found = "; ".join(f"{key}({', '.join(value['inputs'])})" for key, value in signatures.items())
        raise ValueError(
            f"{path} is not {what} (signature {signature!r}); its signatures: {found or 'none'}.")
    return interpreter.get_signature_runner(signature)


def litert_interpreter(model_path=None, model_content=None):
    """A LiteRT interpreter (`ai_edge_litert`, TFLite's runtime; `tf.lite.Interpreter` is deprecated)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=model_path, model_content=model_content)


def export_tflite(encoder, path, sequence_length=128, batch_size=1, recipe="float32",
                  representative_data=None):
    """Converts `encoder` to a TFLite flatbuffer with fixed-shape int32 inputs.

    Inputs (signature `serving_token_ids`): `token_ids`, `segment_ids`,
    `padding_mask`, int32 `(batch_size, sequence_length)`, fixed: the
    runner helpers (`run_tflite`, `verify_tflite`) refuse other shapes with
    a ValueError naming the accepted one. Outputs: float32
    `pooled_output` `(batch_size, hidden_size)` and `sequence_output`
    `(batch_size, sequence_length, hidden_size)`, under every recipe.
    Conversion goes through `keras.export.ExportArchive` (which keeps Keras 3
    variables) and `tf.lite.TFLiteConverter` restricted to `TFLITE_BUILTINS`,
    so the file runs on the stock TFLite runtime without Flex ops. The file is
    written atomically (a failure leaves no file at `path`; an existing file
    is replaced only once the new one is complete).

    Args:
        encoder: `kbert.models.BertEncoder` (float32 weights recommended).
        path: str, output `.tflite` file.
        sequence_length: int <= `max_position_embeddings`.
        batch_size: int >= 1, fixed batch dimension.
        recipe: str, a key of `kbert.serving.tflite_recipes.TFLITE_RECIPES`:
            `float32`, `float16`, `dynamic_int8` or `int8_selective`.
        representative_data: for `int8_selective` only (required there): a
            dict of int arrays `(num_examples, sequence_length)` keyed by
            `token_ids`, `segment_ids`, `padding_mask` (e.g. the output of
            `kbert.text.BertTextPreprocessor` on a few hundred of your own
            texts), or a list of such dicts.

    Returns:
        bytes of the model (also written to `path`).

    Raises:
        ValueError: `sequence_length` above `max_position_embeddings`, a
            `batch_size` below 1, an unknown recipe, missing or malformed
            `representative_data` (see `tflite_recipes.representative_dataset`),
            all before anything is converted or written.
        TypeError: representative data that is not dicts of integer arrays.
        tf.lite ConverterError: an op outside the TFLite builtins.
    """
    check_tflite_target(encoder, sequence_length, batch_size)

    def serve(token_ids, segment_ids, padding_mask):
        outputs = encoder(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
            training=False,
        )
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    specs = [tf.TensorSpec([batch_size, sequence_length], tf.int32, name=n) for n in INPUT_NAMES]
    return convert_to_tflite(encoder, serve, specs, SIGNATURE, path, recipe, representative_data)


def check_tflite_target(model, sequence_length, batch_size=1):
    """Validates a TFLite export's fixed shape before converting.

    Args:
        model: a `BertEncoder` or task model.
        sequence_length: int, the fixed length.
        batch_size: int, the fixed batch size.

    Raises:
        ValueError: `sequence_length` not an int in [3, max_position_embeddings],
            or `batch_size` not an int >= 1.
    """
    check_sequence_length(model, sequence_length)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")


def convert_to_tflite(model, function, input_signature, signature, path, recipe="float32",
                      representative_data=None, names=None):
    """Converts `function` (reading `model`'s variables) to a TFLite file, builtin ops only.

    Goes through `keras.export.ExportArchive` (which keeps Keras 3
    variables) and `tf.lite.TFLiteConverter` restricted to `TFLITE_BUILTINS`
    with the settings of `recipe` (`kbert.serving.tflite_recipes`), so the
    file runs on the stock TFLite runtime without Flex ops. The recipe and
    the representative data are checked before anything is traced. The file
    is written atomically (`kbert.serving.archive.atomic_output`).

    Args:
        model: the Keras model whose variables `function` reads (saved
            through `function`; see `new_export_archive`).
        function: callable of the `input_signature` tensors -> dict of outputs.
        input_signature: list of int32 `tf.TensorSpec` with names (fixed shapes).
        signature: str, the signature key in the TFLite file.
        path: str, the `.tflite` file to write.
        recipe: str, a key of `TFLITE_RECIPES`.
        representative_data: the integer recipes' examples (see
            `tflite_recipes.representative_dataset`), keyed by the feature
            names (`names` values).
        names: optional dict file input name -> feature name of
            `representative_data` (default: the same names).

    Returns:
        bytes, the flatbuffer (also written to `path`).

    Raises:
        ValueError, TypeError: an unknown recipe, missing or malformed
            `representative_data` (see `tflite_recipes.check_recipe` and
            `tflite_recipes.representative_dataset`).
        tf.lite ConverterError: an op outside the TFLite builtins.
    """
    check_recipe(recipe, representative_data)
    config = getattr(model, "bert_config", None) or model.encoder.bert_config
    dataset = None
    if representative_data is not None:
        names = names or {spec.name: spec.name for spec in input_signature}
        limits = {"token_ids": config.vocab_size, "segment_ids": config.type_vocab_size}
        dataset = representative_dataset(representative_data, input_signature, signature,
                                          names, limits)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive = new_export_archive(model)
        archive.add_endpoint(signature, function, input_signature=input_signature)
        archive.write_out(saved_model_dir, verbose=False)
        flatbuffer = convert_saved_model(
            saved_model_dir, signature, recipe, dataset,
            float_fully_connected_inputs=(config.intermediate_size,),
        )
    with atomic_output(path) as temporary, open(temporary, "wb") as f:
        f.write(flatbuffer)
        f.flush()
        os.fsync(f.fileno())
    return flatbuffer


# Ops that carry ids on unchanged in value (or re-index negative ones) between
# a TFLite input and the GATHER that reads an embedding table with them.
_ID_PASSTHROUGH_OPS = {"CAST", "ADD", "SELECT", "SELECT_V2", "RESHAPE", "SQUEEZE", "EXPAND_DIMS",
                       "IDENTITY"}


def id_table_sizes(path):
    """The number of rows of the embedding table each input of a TFLite file indexes.

    Follows each graph input through ops that pass ids on (casts, the
    `x < 0 ? x + n : x` re-indexing of Keras' `take`) to the `GATHER` whose
    indices they are; the table's first dimension is the bound.

    Args:
        path: str, the `.tflite` file.

    Returns:
        dict input tensor index -> int rows, for the inputs that index a
        table (empty when the file's ops cannot be read).
    """
    try:
        interpreter = litert_interpreter(model_path=path)
        ops = interpreter._get_ops_details()
        shapes = {t["index"]: tuple(t["shape"]) for t in interpreter.get_tensor_details()}
        inputs = [detail["index"] for detail in interpreter.get_input_details()]
    except (AttributeError, ValueError, RuntimeError):
        return {}
    sizes = {}
    for index in inputs:
        reached, frontier = {index}, [index]
        while frontier and index not in sizes:
            tensor = frontier.pop()
            for op in ops:
                operands = list(op["inputs"])
                if tensor not in operands:
                    continue
                if op["op_name"] == "GATHER" and operands.index(tensor) == 1:
                    table = shapes.get(operands[0])
                    if table:
                        sizes[index] = int(table[0])
                        break
                elif op["op_name"] in _ID_PASSTHROUGH_OPS:
                    new = [out for out in op["outputs"] if out not in reached]
                    reached.update(new)
                    frontier.extend(new)
    return sizes


def check_tflite_inputs(path, input_details, features, names=None, any_batch=False,
                        id_limits=None):
    """Checks host features against a TFLite signature's inputs, before invoking.

    A TFLite file has the shapes it was exported with; the signature runner
    would resize its inputs to whatever it is given, and XNNPack then fails
    with an opaque "failed to reshape" error. This check says instead what
    the file accepts. A TFLite graph has no assert ops either: a negative id
    silently reads another row of the embedding table (Keras' `take` wraps
    it) and an id past the table fails with "gather index out of bounds", so
    ids are range-checked here: negative ids always, and ids at or above the
    size of the table the input indexes (`id_limits`, else read from the
    file by `id_table_sizes`).

    Args:
        path: str, the `.tflite` file (named in the errors).
        input_details: the signature runner's `get_input_details()`.
        features: dict of arrays.
        names: optional dict file input name -> key of `features`, in the
            order to check them (default: the file's names, sorted).
        any_batch: bool, accept any batch size (for runners that feed the
            rows one by one); the other dimensions must match.
        id_limits: optional dict key of `features` -> int, the exclusive
            upper bound of its ids (e.g. `{"token_ids": vocab_size}`);
            default: the embedding table sizes found in the file.

    Returns:
        dict file input name -> array of the file's dtype.

    Raises:
        ValueError: a missing input, an input whose shape is not the
            file's (both shapes, and the file's batch size and length, named),
            or a negative id or one >= its table size (the input, the value,
            its position and the bound named).
        TypeError: ids of a non-integer dtype.
    """
    names = names or {name: name for name in sorted(input_details)}
    if set(names) - set(input_details):
        raise ValueError(f"{path} takes inputs {sorted(input_details)}, not {sorted(names)}: "
                         "a file of another kind (see its signatures).")
    missing = [key for key in names.values() if key not in features]
    if missing:
        raise ValueError(f"{path} takes inputs {sorted(names.values())}; missing {missing}.")
    if id_limits is None:
        sizes = id_table_sizes(path)
        id_limits = {key: sizes[input_details[file_name]["index"]]
                     for file_name, key in names.items()
                     if input_details[file_name]["index"] in sizes}
    arrays = {}
    for file_name, key in names.items():
        detail = input_details[file_name]
        expected = tuple(int(d) for d in detail["shape"])
        array = np.asarray(features[key])
        if array.dtype.kind not in "biu":
            raise TypeError(f"`{key}` must hold integer ids; received dtype {array.dtype}.")
        shape = array.shape
        compared = shape[1:] == expected[1:] if any_batch else shape == expected
        if len(shape) != len(expected) or not compared:
            accepted = ("(any batch size, " + ", ".join(map(str, expected[1:])) + ")"
                        if any_batch else str(expected))
            length = f", sequence length {expected[1]}" if len(expected) > 1 else ""
            raise ValueError(
                f"{path} takes `{key}` of shape {accepted} (batch size {expected[0]}{length}, "
                f"fixed when it was exported); received shape {shape}. Pad or truncate the "
                "inputs to that length, or export a file of the length you need."
            )
        if key != "padding_mask":
            _check_ids(path, key, array, id_limits.get(key))
        arrays[file_name] = array.astype(detail["dtype"])
    return arrays


def _check_ids(path, key, array, limit):
    """Raises ValueError for a negative id in `array`, or one >= `limit` (when known)."""
    bad = np.argwhere(array < 0)
    if not bad.size and limit is not None:
        bad = np.argwhere(array >= limit)
    if not bad.size:
        return
    position = tuple(int(i) for i in bad[0])
    bound = f"in [0, {limit}) (the rows of its embedding table)" if limit is not None else ">= 0"
    raise ValueError(
        f"{path} takes `{key}` ids {bound}; received {int(array[position])} at index "
        f"{position}. A TFLite file does not check ids itself."
    )


def run_tflite(path, features):
    """Runs a TFLite file from `export_tflite` on a dict of int arrays; returns outputs.

    Args:
        path: str, the `.tflite` file.
        features: dict of `INPUT_NAMES` -> int arrays of the file's shape
            `(batch_size, sequence_length)`.

    Returns:
        dict of float32 `pooled_output`, `sequence_output`.

    Each call uses a fresh interpreter, so the error text of a failed call
    (TFLite's error reporter accumulates it) never shows up in the next.

    Raises:
        ValueError: features of another shape than the file's, negative ids
            or ids past the embedding tables (see `check_tflite_inputs`), or
            a missing input.
        TypeError: non-integer ids.
    """
    interpreter = litert_interpreter(model_path=path)
    runner = signature_runner(interpreter, SIGNATURE, path, "an id-input encoder file")
    names = {name: name for name in INPUT_NAMES}
    return runner(**check_tflite_inputs(path, runner.get_input_details(), features, names))


def verify_tflite(path, encoder, features, atol=1e-4):
    """Compares a TFLite file with `encoder` on `features` (int arrays of the file's shape).

    Returns:
        float, the largest absolute difference over `pooled_output` and the
        real-token rows of `sequence_output`.

    Raises:
        ValueError: features of another shape than the file's, or ids out
            of range (see `check_tflite_inputs`).
        ExportVerificationError: a difference above `atol`.
    """
    actual = run_tflite(path, features)
    expected = {
        k: keras.ops.convert_to_numpy(v).astype(np.float32)
        for k, v in encoder({k: features[k] for k in INPUT_NAMES}, training=False).items()
    }
    return compare_outputs(actual, expected, features["padding_mask"], atol, f"TFLite file {path}")
