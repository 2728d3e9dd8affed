"""Host-side input checks shared by every kbert BERT model (encoder, pretrainer, task models).

`check_input_dict` validates a dict of NumPy/eager inputs (keys, integer ids,
rank-2 shapes that agree, length <= `max_position_embeddings`, ids in range,
a non-empty batch) before Keras converts them; `check_input_spec` validates a
`tf.data` element spec or a batch's static spec; `BertInputsModel` runs them
at every entry point (`__call__`, `fit`, `evaluate`, `predict`,
`*_on_batch`, and the train/test/predict steps). In-graph checks of the same
limits live in `kbert.layers.BertEmbeddings` and, for exports, in
`kbert.serving.request_checks`.
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

INPUT_NAMES = ("token_ids", "segment_ids", "padding_mask")
_HF_ALIASES = {"input_ids": "token_ids", "token_type_ids": "segment_ids", "attention_mask": "padding_mask"}
# Id inputs -> the `BertConfig` field that bounds them.
ID_LIMITS = {"token_ids": "vocab_size", "segment_ids": "type_vocab_size"}
POSITIONS_NAME = "masked_lm_positions"
DATASET_YIELDS = "the dataset yields"


class InvalidIdsError(ValueError, tf.errors.InvalidArgumentError):
    """An id outside its embedding table, found on the host before running the model.

    Both a `ValueError` (a bad argument) and a `tf.errors.InvalidArgumentError`
    (what the same check raises inside the graph, see `BertEmbeddings`), so
    code catching either sees it from every entry point.
    """

    def __init__(self, message):
        tf.errors.InvalidArgumentError.__init__(self, None, None, message)
        self.args = (message,)

    def __reduce__(self):
        return type(self), (self.message,)


def _host_array(name, value):
    """`value` as a NumPy array when it is host data (NumPy), else None.

    Raises:
        TypeError: a list or tuple (Keras would read it as a structure of
            many inputs).
    """
    if isinstance(value, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a NumPy array or a tensor of shape (batch_size, length); received "
            f"a {type(value).__name__} (convert it with np.asarray)."
        )
    if not isinstance(value, (np.ndarray, np.generic)):
        return None
    return np.asarray(value)


def _is_eager_tensor(value):
    return tf.is_tensor(value) and not tf.is_symbolic_tensor(value)


def _dtype_kind(dtype):
    """"int", "bool", "float" or "other" for a NumPy dtype or a `tf.DType`."""
    if isinstance(dtype, tf.DType):
        kinds = (("int", dtype.is_integer), ("bool", dtype.is_bool), ("float", dtype.is_floating))
        return next((kind for kind, yes in kinds if yes), "other")
    return {"i": "int", "u": "int", "b": "bool", "f": "float"}.get(np.dtype(dtype).kind, "other")


def _check_dtype(name, dtype, where="received"):
    kind = _dtype_kind(dtype)
    shown = dtype.name if isinstance(dtype, tf.DType) else np.dtype(dtype)
    if name == "padding_mask":
        if kind == "other":
            raise TypeError(
                f"`padding_mask` must hold 1 (real token) and 0 (padding) as ints, bools "
                f"or floats; {where} dtype {shown}."
            )
    elif kind not in ("int", "bool"):
        what = "positions" if name == POSITIONS_NAME else "ids"
        raise TypeError(f"`{name}` must hold integer {what}; {where} dtype {shown}.")


def _static_shape(value):
    """The static shape of an array, tensor, KerasTensor or TensorSpec as a tuple (None = unknown)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    if isinstance(shape, tf.TensorShape):
        return None if shape.rank is None else tuple(shape.as_list())
    return tuple(None if d is None else int(d) for d in shape)


def _check_shapes(inputs, names, config, where):
    shapes = {name: _static_shape(inputs[name]) for name in names}
    for name, shape in shapes.items():
        if shape is not None and len(shape) != 2:
            what = "(batch_size, num_predictions)" if name == POSITIONS_NAME else "(batch_size, sequence_length)"
            hint = " (batch it first)" if len(shape) == 1 and where == DATASET_YIELDS else ""
            raise ValueError(
                f"`{name}` must have shape {what}; {where} shape {shape}{hint}."
            )
    reference = shapes["token_ids"]
    if reference is None:
        return
    for name in ("segment_ids", "padding_mask", POSITIONS_NAME):
        shape = shapes.get(name)
        if shape is None:
            continue
        axes = (0,) if name == POSITIONS_NAME else (0, 1)
        if any(None not in (shape[a], reference[a]) and shape[a] != reference[a] for a in axes):
            what = "the batch size" if name == POSITIONS_NAME else "the shape"
            raise ValueError(
                f"`{name}` must have {what} of `token_ids` {reference}; {where} shape {shape}."
            )
    length = reference[1]
    if length == 0:
        raise ValueError(
            f"`token_ids` must have shape (batch_size, sequence_length) with sequence_length "
            f">= 1 ([CLS] at least); {where} shape {reference}."
        )
    if config is not None and length is not None and length > config.max_position_embeddings:
        raise ValueError(
            f"Sequence length {length} exceeds max_position_embeddings="
            f"{config.max_position_embeddings} (`token_ids` {where} shape {reference}). "
            "Truncate the input or use a model with more positions."
        )


def _check_range(name, array, low, high, what):
    """Raises `InvalidIdsError` for a host value of `array` outside `[low, high)`."""
    if not array.size:
        return
    smallest, largest = array.min(), array.max()
    if smallest >= low and largest < high:
        return
    bad = smallest if smallest < low else largest
    index = tuple(int(i) for i in np.argwhere(array == bad)[0])
    holds = f"a negative {what}" if bad < low else f"{'an' if what == 'id' else 'a'} {what} >= {high}"
    table = f", the size of its embedding table ({ID_LIMITS[name]})" if name in ID_LIMITS else ""
    raise InvalidIdsError(
        f"`{name}` holds {holds}: {bad} at index {index}; {what}s must be in [{low}, {high}){table}."
    )


def _check_keys(inputs, names, model_name, where="received"):
    if not isinstance(inputs, dict):
        # ValueError as for wrong keys: callers catch one type for a wrong input structure.
        raise ValueError(  # noqa: TRY004
            f"{model_name} takes a dict with keys {list(names)}; {where} {type(inputs).__name__}."
        )
    missing = [n for n in names if n not in inputs]
    unknown = [k for k in inputs if k not in names]
    if missing or unknown:
        hints = [f"{k!r} -> {_HF_ALIASES[k]!r}" for k in unknown if k in _HF_ALIASES]
        raise ValueError(
            f"{model_name} takes a dict with keys {list(names)}; missing {missing}, "
            f"unknown {unknown}." + (f" Rename HuggingFace keys: {', '.join(hints)}." if hints else "")
        )


def check_input_dict(inputs, names, model_name, config=None):
    """Checks a model's input dict before Keras casts it; the one check of every entry point.

    What is checked depends on what the values are: the keys always; for
    host data (NumPy arrays) the dtypes, shapes and id ranges; for
    eager tensors the dtypes and shapes (ids are range-checked in the graph
    by `BertEmbeddings`); for symbolic tensors, KerasTensors and
    `tf.TensorSpec`s (a dataset's `element_spec`) their static shapes. Keras'
    own symbolic build under tf.distribute feeds mean-reduced (float)
    placeholders through `__call__`, so symbolic dtypes are not checked here
    (`BertInputsModel` checks them in its train/test/predict steps).

    Args:
        inputs: dict of input name -> array, tensor or spec.
        names: the model's input names (`INPUT_NAMES`, plus
            `masked_lm_positions` for the pretrainer).
        model_name: str, named in the errors.
        config: optional `BertConfig`; with it, sequence lengths and id
            ranges are checked too.

    Raises:
        ValueError: not a dict, missing or unknown keys (HuggingFace names get
            their kbert name), an input not of rank 2, inputs whose shapes
            differ (`segment_ids`/`padding_mask` vs `token_ids`, the batch of
            `masked_lm_positions`), or a sequence of length 0 or longer than
            `max_position_embeddings`.
        TypeError: `token_ids`/`segment_ids`/`masked_lm_positions` of a
            non-integer dtype (Keras would silently truncate floats), a
            `padding_mask` that is not numeric, or a list (Keras reads a
            list as many inputs).
        InvalidIdsError (a ValueError and a tf.errors.InvalidArgumentError):
            host ids outside `[0, vocab_size)` / `[0, type_vocab_size)`, or
            host positions outside `[0, sequence_length)`.
    """
    _check_keys(inputs, names, model_name)
    arrays = {name: _host_array(name, inputs[name]) for name in names}
    for name in names:
        if arrays[name] is not None:
            _check_dtype(name, arrays[name].dtype)
        elif _is_eager_tensor(inputs[name]):
            _check_dtype(name, inputs[name].dtype)
    _check_shapes(inputs, names, config, "received")
    if config is None:
        return
    for name, limit in ID_LIMITS.items():
        if arrays[name] is not None:
            _check_range(name, arrays[name], 0, getattr(config, limit), "id")
    positions = arrays.get(POSITIONS_NAME)
    length = (_static_shape(inputs["token_ids"]) or (None, None))[1]
    if positions is not None and length is not None:
        _check_range(POSITIONS_NAME, positions, 0, length, "position")


def check_input_spec(x_spec, names, model_name, config=None, where=DATASET_YIELDS):
    """Checks the `x` part of a dataset's `element_spec` (or traced batch) up front.

    Args:
        x_spec: dict of input name -> `tf.TensorSpec` (or symbolic tensor).
        names, model_name, config: as for `check_input_dict`.
        where: str, how the errors introduce what they received.

    Raises:
        ValueError: not a dict, missing or unknown keys, a static rank other
            than 2, static shapes that differ, or a static length of 0 or
            above `max_position_embeddings`.
        TypeError: ids of a non-integer dtype (the error names the key).
    """
    _check_keys(x_spec, names, model_name, where)
    for name in names:
        dtype = getattr(x_spec[name], "dtype", None)
        if dtype is not None:
            _check_dtype(name, tf.as_dtype(dtype), where)
    _check_shapes(x_spec, names, config, where)


def _x_of(data):
    """The inputs part of `data` as Keras unpacks it: `x`, `(x,)`, `(x, y)` or `(x, y, w)`."""
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 3 and isinstance(data[0], dict):
        return data[0]
    return data


class BertInputsModel(keras.Model):
    """A functional Keras model whose inputs are checked the same way at every entry point.

    `__call__`, `predict`, `evaluate`, `fit`, `predict_on_batch`,
    `train_on_batch` and `test_on_batch` all run `check_input_dict` on host
    inputs (keys, integer ids, rank-2 shapes that agree, 1 <= length <=
    `max_position_embeddings`, ids in range) before Keras converts them
    (before, `predict` silently truncated float ids); `fit`, `evaluate` and
    `predict` also refuse host data of 0 examples. A `tf.data.Dataset`
    (also `validation_data`) is checked through its `element_spec` up front;
    generators and `keras.utils.PyDataset`s, whose batches cannot be seen
    without consuming them, are checked batch by batch in the train, test
    and predict steps (keys, dtypes, static shapes; ids are range-checked in
    the graph by `BertEmbeddings`).

    Subclasses set `input_names` and define `_input_config()` (the `BertConfig`
    that bounds the ids).
    """

    input_names = INPUT_NAMES

    def _input_config(self):
        raise NotImplementedError

    def _check_inputs(self, inputs):
        check_input_dict(inputs, self.input_names, type(self).__name__, self._input_config())

    def _check_data(self, data, whole=False):
        """Checks `x` of fit/evaluate/predict data: host arrays fully, datasets by their spec.

        Args:
            data: the `x` (or `validation_data`) argument.
            whole: bool, `data` is a whole data set (fit/evaluate/predict),
                which must hold at least one example.

        Raises:
            ValueError, TypeError: see `check_input_dict`; with `whole`,
                host inputs of batch size 0 ("holds 0 examples": Keras
                would fail inside its loop with an UnboundLocalError).
        """
        if data is None:
            return
        spec = getattr(data, "element_spec", None)
        if spec is not None:
            check_input_spec(_x_of(spec), self.input_names, type(self).__name__,
                             self._input_config())
            return
        x = _x_of(data)
        if isinstance(x, dict):
            self._check_inputs(x)
            shape = _static_shape(x["token_ids"])
            if whole and shape and shape[0] == 0:
                raise ValueError(
                    f"The data given to {type(self).__name__} holds 0 examples (`token_ids` of "
                    f"shape {shape}); pass at least one."
                )

    def _check_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        check_input_spec(x, self.input_names, type(self).__name__, self._input_config(),
                         where="the batch has")

    def __call__(self, inputs, *args, **kwargs):
        self._check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def train_step(self, data):
        self._check_step(data)
        return super().train_step(data)

    def test_step(self, data):
        self._check_step(data)
        return super().test_step(data)

    def predict_step(self, data):
        self._check_step(data)
        return super().predict_step(data)

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_data(x, whole=True)
        bound = inspect.signature(keras.Model.fit).bind_partial(self, x, y, *args, **kwargs)
        self._check_data(bound.arguments.get("validation_data"), whole=True)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation, checked by fit
            self._check_data(x, whole=True)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_data(x, whole=True)
        return super().predict(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self._check_data(x)
        return super().predict_on_batch(x)

    def train_on_batch(self, x, *args, **kwargs):
        self._check_data(x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        self._check_data(x)
        return super().test_on_batch(x, *args, **kwargs)
