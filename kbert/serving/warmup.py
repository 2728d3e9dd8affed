"""TF Serving warmup files: `assets.extra/tf_serving_warmup_requests` in a SavedModel.

TF Serving reads this file when it loads a model version and runs each
request once before the version serves traffic, so the first real requests
do not pay for graph optimisation and kernel set-up (TF Serving's "SavedModel
Warmup" guide, `tensorflow_serving/servables/tensorflow/saved_model_warmup*`).
The file is a TFRecord of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`s,
each holding a `PredictRequest` (`model_spec.signature_name` and the inputs as
`TensorProto`s from `tf.make_tensor_proto`), exactly what a gRPC client sends.
A request that fails makes TF Serving refuse the whole version, so
`write_warmup_requests` checks every request against the signature it names
(input names and dtypes, read from `saved_model.pb`) and requires at least
one request for every signature.

To replay a file as TF Serving does, read it with `read_warmup_requests` and
run the requests with `kbert.serving.fresh_process.run_requests_in_fresh_process`
(a process that has only the folder); `python -m export.validate` does it for
any export.
"""

import os

import numpy as np
import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_FOLDER = "assets.extra"
# TF Serving reads at most this many records (`kMaxNumRecords` in saved_model_warmup_util).
MAX_WARMUP_REQUESTS = 1000


def warmup_path(saved_model_dir):
    """The warmup file of a SavedModel: `DIR/assets.extra/tf_serving_warmup_requests`."""
    return os.path.join(saved_model_dir, WARMUP_FOLDER, WARMUP_FILE)


def signature_inputs(saved_model_dir):
    """The serving signatures of a SavedModel, read from its `saved_model.pb` (nothing loaded).

    Args:
        saved_model_dir: str, a SavedModel folder.

    Returns:
        dict signature name -> dict input name -> `tf.DType`
        (the `__saved_model_init_op` entry excluded).

    Raises:
        FileNotFoundError: no `saved_model.pb` in the folder.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signatures = saved_model.meta_graphs[0].signature_def
    return {
        name: {key: tf.as_dtype(info.dtype) for key, info in signature.inputs.items()}
        for name, signature in signatures.items()
        if name != "__saved_model_init_op"
    }


def predict_log(signature, inputs, model_name=None):
    """One warmup record: a `PredictionLog` holding a `PredictRequest`.

    Args:
        signature: str, the signature key (`model_spec.signature_name`).
        inputs: dict input name -> array-like (NumPy arrays keep their dtype;
            lists of str become tf.string).
        model_name: optional str for `model_spec.name` (TF Serving does not
            read it during warmup).

    Returns:
        `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name or "", signature_name=signature)
    )
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value)))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def _as_array(value):
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8").astype(object)
    return array


def check_warmup_requests(signatures, requests):
    """Checks requests against a SavedModel's signatures, before anything is written.

    Args:
        signatures: dict from `signature_inputs`.
        requests: list of `(signature, inputs)` pairs (see `write_warmup_requests`).

    Raises:
        ValueError: no requests, more than `MAX_WARMUP_REQUESTS`, a request
            for a signature the model lacks, a request whose input names are
            not the signature's or whose dtype differs (name, expected and
            received dtype), or a signature with no request (TF Serving would
            leave it cold; all missing ones listed).
    """
    if not requests:
        raise ValueError("Warmup needs at least one request.")
    if len(requests) > MAX_WARMUP_REQUESTS:
        raise ValueError(
            f"{len(requests)} warmup requests; TF Serving reads at most {MAX_WARMUP_REQUESTS}."
        )
    for signature, inputs in requests:
        if signature not in signatures:
            raise ValueError(
                f"Warmup request for signature {signature!r}, which the SavedModel lacks "
                f"(it has {sorted(signatures)})."
            )
        expected = signatures[signature]
        if set(inputs) != set(expected):
            raise ValueError(
                f"Warmup request for {signature!r} has inputs {sorted(inputs)}; the signature "
                f"takes {sorted(expected)}."
            )
        for name, value in inputs.items():
            dtype = tf.as_dtype(_as_array(value).dtype if not isinstance(value, tf.Tensor)
                                else value.dtype)
            if dtype != expected[name]:
                raise ValueError(
                    f"Warmup request for {signature!r}: input `{name}` is {dtype.name}; the "
                    f"signature takes {expected[name].name}."
                )
    cold = sorted(set(signatures) - {signature for signature, _ in requests})
    if cold:
        raise ValueError(f"No warmup request for signatures {cold}; every signature needs one.")


def write_warmup_requests(saved_model_dir, requests, model_name=None):
    """Writes `DIR/assets.extra/tf_serving_warmup_requests` for a written SavedModel.

    Call it on the folder before it is published (kbert's exporters call it
    inside `kbert.serving.archive.write_archive`, on the temporary folder
    that is renamed into place), so TF Serving never sees a version without
    its warmup file.

    Args:
        saved_model_dir: str, a SavedModel folder (its `saved_model.pb` is read).
        requests: list of `(signature, inputs)`: a signature key and a dict
            input name -> array-like of the signature's dtype (int32 NumPy
            arrays for `serving_token_ids`, int64 for
            `serving_token_ids_int64`, lists of str for text). Every
            signature of the SavedModel needs at least one request.
        model_name: optional str stored as `model_spec.name`.

    Returns:
        str, the path of the warmup file.

    Raises:
        ValueError: see `check_warmup_requests` (nothing is written then).
        FileNotFoundError: `saved_model_dir` holds no `saved_model.pb`.
    """
    check_warmup_requests(signature_inputs(saved_model_dir), requests)
    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            writer.write(predict_log(signature, inputs, model_name).SerializeToString())
    return path


def read_warmup_requests(path):
    """Reads a warmup file back.

    Args:
        path: str, a `tf_serving_warmup_requests` file or the SavedModel
            folder holding one.

    Returns:
        list of `(signature, inputs)`: the signature key and a dict input
        name -> NumPy array (`tf.make_ndarray`: strings as `bytes` objects).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a record that is not a `PredictionLog` with a `predict_log`
            request (its index named).
    """
    from google.protobuf import message
    from tensorflow_serving.apis import prediction_log_pb2

    if os.path.isdir(path):
        path = warmup_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No warmup file at {path}.")
    requests = []
    for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except message.DecodeError as error:
            raise ValueError(f"{path}: record {i} is not a PredictionLog ({error}).") from error
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(
                f"{path}: record {i} holds a {log.WhichOneof('log_type')}, not a predict_log."
            )
        request = log.predict_log.request
        requests.append((
            request.model_spec.signature_name,
            {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()},
        ))
    return requests

