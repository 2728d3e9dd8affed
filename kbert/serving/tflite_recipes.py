"""TFLite conversion recipes: named converter settings, each validated.

Every kbert TFLite file has int32 id inputs bound by name through its
signature and float32 outputs; a recipe only changes how the weights are
stored and which ops compute in integer arithmetic. The recipes follow
MediaPipe Model Maker's quantization configs
(`mediapipe/model_maker/python/core/utils/quantization.py`: dynamic range,
float16, int8 with a representative dataset) and the TFLite post-training
quantization guide (https://ai.google.dev/edge/litert/models/post_training_quantization):

  * `float32`: the converter's defaults.
  * `float16`: `optimizations=[DEFAULT]`, `supported_types=[tf.float16]`.
  * `dynamic_int8`: `optimizations=[DEFAULT]`, no representative data.
  * `int8_selective`: `optimizations=[DEFAULT]` with a representative dataset,
    then the quantization debugger's selective quantization
    (`tf.lite.experimental.QuantizationDebugger` with
    `QuantizationDebugOptions(denylisted_ops=..., denylisted_nodes=...)`,
    https://ai.google.dev/edge/litert/models/quantization_debugger).

Why no fully integer recipe: measured on all-MiniLM-L6-v2 (pooled-output
cosine against Keras on SST-2 dev sentences), full int8 gives 0.35. The
attention bias of padded keys (-1e9) shares one int8 scale with the attention
scores, so every score of a real key rounds to the same value; LayerNorm's
inputs and the GELU output carry outlier features (peak/std up to ~200) that
one int8 scale per tensor cannot resolve. 16-bit activations
(`EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8`) fail twice in
TF 2.20: the converter stops at the int32 id arithmetic of the embedding
lookup ("Empty min/max for tensor ...token_ids"), and with that bypassed the
runtime has no int16 `SQUARED_DIFFERENCE` kernel for LayerNorm. Keeping the
attention softmax path, LayerNorm, GELU, the residual adds and the FFN output
projection in float32 (`int8_selective`) gives 0.99.
"""

import collections.abc
import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TfliteRecipe:
    """One named TFLite conversion recipe.

    Attributes:
        name: str, the recipe's name (the key in `TFLITE_RECIPES`).
        description: str, one line: how weights are stored and what computes in
            integer arithmetic.
        needs_representative_data: bool, whether the exporters require
            `representative_data` (calibration of activation ranges).
    """

    name: str
    description: str
    needs_representative_data: bool = False


TFLITE_RECIPES = {
    recipe.name: recipe
    for recipe in (
        TfliteRecipe(
            "float32",
            "float32 weights and arithmetic; matches Keras to ~1e-6.",
        ),
        TfliteRecipe(
            "float16",
            "float16 weights (half the size), dequantized to float32 at load; float32 "
            "arithmetic.",
        ),
        TfliteRecipe(
            "dynamic_int8",
            "int8 weights (dynamic-range quantization): fully connected layers quantize "
            "their float inputs at run time and compute in int8; no calibration data.",
        ),
        TfliteRecipe(
            "int8_selective",
            "int8 weights and activations with ranges calibrated on representative data "
            "for the embeddings and the query/key/value, attention-output, FFN-input, "
            "pooler and head layers; LayerNorm, attention scores/softmax/context, GELU, "
            "residual adds and the FFN output layer stay float32.",
            needs_representative_data=True,
        ),
    )
}

# int8_selective: the ops left in float32 (TFLite builtin names). BATCH_MATMUL,
# SOFTMAX and ADD keep the attention scores, the -1e9 padding bias and the
# probabilities in float; MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, SUB, NEG and ADD
# are LayerNorm (and the residual adds); GELU is the FFN activation.
SELECTIVE_FLOAT_OPS = ("ADD", "BATCH_MATMUL", "GELU", "MEAN", "MUL", "NEG", "RSQRT",
                       "SOFTMAX", "SQUARED_DIFFERENCE", "SUB")


def check_recipe(recipe, representative_data=None):
    """Validates a recipe name and whether it gets representative data.

    Args:
        recipe: str, a key of `TFLITE_RECIPES`.
        representative_data: what the caller passed (only its presence is checked).

    Returns:
        `TfliteRecipe`.

    Raises:
        ValueError: an unknown recipe (the recipes and their descriptions
            listed), an integer recipe without `representative_data`, or
            `representative_data` given to a recipe that does not use it.
    """
    if not isinstance(recipe, str) or recipe not in TFLITE_RECIPES:
        listed = "; ".join(f"{r.name}: {r.description}" for r in TFLITE_RECIPES.values())
        raise ValueError(f"recipe={recipe!r} is not a TFLite recipe. The recipes: {listed}")
    spec = TFLITE_RECIPES[recipe]
    if spec.needs_representative_data and representative_data is None:
        raise ValueError(
            f"recipe={recipe!r} calibrates activation ranges and needs representative_data: "
            "a dict of int arrays (num_examples, sequence_length) from your own data (a few "
            "hundred examples), e.g. the output of kbert.text.BertTextPreprocessor."
        )
    if not spec.needs_representative_data and representative_data is not None:
        users = sorted(r.name for r in TFLITE_RECIPES.values() if r.needs_representative_data)
        raise ValueError(
            f"representative_data is used only by the recipes {users}; recipe={recipe!r} "
            "does not calibrate. Leave it out or choose an integer recipe."
        )
    return spec


def representative_dataset(representative_data, input_signature, signature, names,
                           id_limits=None):
    """Checks representative examples and returns a signature-keyed dataset for the converter.

    The converter's calibrator binds each sample to the signature's inputs by
    name (`(signature_key, {input_name: array})` samples), so no input is fed
    in the wrong position.

    Args:
        representative_data: a dict of integer arrays `(num_examples,
            sequence_length)` keyed by the feature names (the values of
            `names`), or an iterable of such dicts (concatenated).
        input_signature: the file's int32 `tf.TensorSpec`s, fixed shape
            `(batch_size, sequence_length)`.
        signature: str, the signature key of the file.
        names: dict file input name -> feature name.
        id_limits: optional dict feature name -> int, the exclusive upper bound
            of its ids (the embedding table's rows).

    Returns:
        callable returning an iterator of `(signature, {input name: int32 array
        (batch_size, sequence_length)})`, one sample per `batch_size` examples.

    Raises:
        ValueError: a missing or unexpected key, an array not of shape
            `(num_examples, sequence_length)` or with a number of rows
            different from the others, fewer examples than the batch size, or ids outside `[0, limit)` (each error names the key,
            what was expected and what was received).
        TypeError: data that is not a dict (or an iterable of dicts), or a
            non-integer array.
    """
    batch_size, length = (int(d) for d in input_signature[0].shape)
    chunks = ([representative_data] if isinstance(representative_data, collections.abc.Mapping)
              else _as_list(representative_data))
    expected = sorted(names.values())
    columns = {key: [] for key in expected}
    for chunk in chunks:
        if not isinstance(chunk, collections.abc.Mapping):
            raise TypeError(
                f"representative_data must be a dict (or dicts) of int arrays keyed by "
                f"{expected}; received an item of type {type(chunk).__name__}."
            )
        missing = [key for key in expected if key not in chunk]
        unexpected = sorted(str(key) for key in chunk if key not in columns)
        if missing or unexpected:
            raise ValueError(
                f"representative_data needs the keys {expected}; missing {missing}, "
                f"unexpected {unexpected}."
            )
        rows = None
        for key in expected:
            array = np.asarray(chunk[key])
            if array.dtype.kind not in "biu":
                raise TypeError(
                    f"representative_data[{key!r}] must hold integer ids; received dtype "
                    f"{array.dtype}."
                )
            if array.ndim != 2 or array.shape[1] != length or rows not in (None, array.shape[0]):
                raise ValueError(
                    f"representative_data[{key!r}] must have shape (num_examples, {length}) "
                    f"(the export's sequence length) like the other keys; received shape "
                    f"{array.shape}."
                )
            rows = array.shape[0]
            _check_id_range(key, array, (id_limits or {}).get(key))
            columns[key].append(array.astype(np.int32))
    data = {key: np.concatenate(parts) if parts else np.zeros((0, length), np.int32)
            for key, parts in columns.items()}
    count = len(data[expected[0]])
    if count < batch_size:
        raise ValueError(
            f"representative_data holds {count} examples; the export needs at least "
            f"{batch_size} (its batch size), and a few hundred calibrate best."
        )

    def dataset():
        for start in range(0, count - batch_size + 1, batch_size):
            yield signature, {name: data[key][start:start + batch_size]
                              for name, key in names.items()}

    return dataset


def _as_list(representative_data):
    if isinstance(representative_data, (str, bytes)) or not isinstance(
            representative_data, collections.abc.Iterable):
        raise TypeError(
            "representative_data must be a dict (or dicts) of int arrays (num_examples, "
            f"sequence_length); received {type(representative_data).__name__}."
        )
    return list(representative_data)


def _check_id_range(key, array, limit):
    bad = np.argwhere(array < 0)
    if not bad.size and limit is not None:
        bad = np.argwhere(array >= limit)
    if bad.size:
        position = tuple(int(i) for i in bad[0])
        bound = f"[0, {limit})" if limit is not None else ">= 0"
        raise ValueError(
            f"representative_data[{key!r}] holds {int(array[position])} at index {position}; "
            f"ids must be in {bound}."
        )


def convert_saved_model(saved_model_dir, signature, recipe, dataset=None,
                        float_fully_connected_inputs=()):
    """Converts one signature of a SavedModel with a recipe's settings, builtin ops only.

    Args:
        saved_model_dir: str, a SavedModel holding `signature`.
        signature: str, the signature to convert (its key in the TFLite file).
        recipe: str, a key of `TFLITE_RECIPES` (checked by `check_recipe`).
        dataset: the `representative_dataset` callable (integer recipes).
        float_fully_connected_inputs: ints, input widths of the fully connected
            layers that `int8_selective` keeps in float32 (kbert passes the
            encoder's `intermediate_size`: the FFN output projection).

    Returns:
        bytes, the flatbuffer.

    Raises:
        tf.lite ConverterError: an op outside the TFLite builtins.
    """
    def converter():
        result = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                          signature_keys=[signature])
        result.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return result

    if recipe == "float32":
        return converter().convert()
    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe == "float16":
        quantizing.target_spec.supported_types = [tf.float16]
    if recipe != "int8_selective":
        return quantizing.convert()
    nodes = _fully_connected_outputs(converter().convert(), set(float_fully_connected_inputs))
    quantizing.representative_dataset = dataset
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=quantizing,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(SELECTIVE_FLOAT_OPS), denylisted_nodes=nodes),
    )
    return debugger.get_nondebug_quantized_model()


def _fully_connected_outputs(flatbuffer, input_widths):
    """Output tensor names of the FULLY_CONNECTED ops whose weights read `input_widths` features."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED" and int(tensors[op["inputs"][1]]["shape"][-1]) \
                in input_widths:
            names.extend(tensors[index]["name"] for index in op["outputs"])
    return names


def recipe_of(path):
    """Names the recipe a kbert TFLite file was converted with, from the dtypes it stores.

    Reads the fully connected layers with the LiteRT interpreter: float32
    weights (`float32`), float16 weights dequantized at load (`float16`),
    int8 weights on float inputs everywhere (`dynamic_int8`), int8 weights
    on int8 inputs (`int8_selective`). A validator uses it to pick the
    tolerance the file is held to.

    Args:
        path: str, a `.tflite` file written by `export_tflite` or
            `export_classifier_tflite`.

    Returns:
        str, a key of `TFLITE_RECIPES`.

    Raises:
        ValueError: a file without fully connected layers, or whose weights
            match no recipe (both named).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    producers = {out: op for op in ops for out in op["outputs"]}
    kinds = set()
    for op in ops:
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        weight = op["inputs"][1]
        if weight in producers and producers[weight]["op_name"] == "DEQUANTIZE":
            weight = producers[weight]["inputs"][0]
        kinds.add((tensors[op["inputs"][0]]["dtype"], tensors[weight]["dtype"]))
    if any(inputs == np.int8 for inputs, _ in kinds):
        return "int8_selective"
    recipes = {(np.float32, np.float32): "float32", (np.float32, np.float16): "float16",
               (np.float32, np.int8): "dynamic_int8"}
    found = {recipes.get(kind) for kind in kinds}
    # The converter leaves weights under 1,024 values in float32 (a small
    # classification head, say): they do not make a file another recipe.
    if len(found) == 2 and "float32" in found:
        found.discard("float32")
    if len(found) != 1 or None in found:
        raise ValueError(
            f"{path}: fully connected (input, weight) dtypes {sorted(str(k) for k in kinds)} "
            f"match no recipe of {list(TFLITE_RECIPES)}."
        )
    return found.pop()
