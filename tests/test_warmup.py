"""TF Serving warmup files (`kbert.serving.warmup`): records that parse as `PredictionLog`s
with the dtypes given, refused when they would leave a signature cold or fail in the server,
and written inside the SavedModel before it is published. (Each exporter's file is replayed
against the Keras model in tests/test_fill_mask.py (encoder, fill-mask) and
tests/test_task_exports.py (task models) in fresh processes, and in tests/test_text_embedder.py.)"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.serving.saved_model import write_archive
from kbert.serving.warmup import (
    MAX_WARMUP_REQUESTS,
    check_warmup_requests,
    read_warmup_requests,
    signature_inputs,
    warmup_path,
)

IDS = {"token_ids": np.array([[101, 7592, 102]], np.int32),
       "mask": np.array([[1, 1, 1]], np.int32)}


def _archive():
    """A two-signature archive (no model): text -> its length, int32 ids -> their sum."""
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", lambda text: {"length": tf.strings.length(text)},
                         input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    archive.add_endpoint(
        "serving_ids", lambda token_ids, mask: {"total": tf.reduce_sum(token_ids * mask, axis=1)},
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                         tf.TensorSpec([None, None], tf.int32, name="mask")])
    return archive


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("warmup") / "model" / "1")
    texts = np.array(["naïve café".encode(), b"", "北京".encode(), b"caf\xe9 \xff"], object)
    return write_archive(_archive(), path, [("serving_default", {"text": texts}),
                                            ("serving_ids", IDS)])


def test_round_trip_keeps_signatures_dtypes_and_bytes(saved_model, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    assert os.path.isfile(warmup_path(saved_model))
    records = list(tf.data.TFRecordDataset(warmup_path(saved_model)).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default", "serving_ids"]
    requests = read_warmup_requests(saved_model)
    assert requests[0][0] == "serving_default"
    assert requests[0][1]["text"].tolist() == ["naïve café".encode(), b"", "北京".encode(),
                                               b"caf\xe9 \xff"]
    for name, value in requests[1][1].items():
        assert value.dtype == np.int32 and np.array_equal(value, IDS[name])
    assert signature_inputs(saved_model) == {
        "serving_default": {"text": tf.string},
        "serving_ids": {"token_ids": tf.int32, "mask": tf.int32}}
    # int64 arrays are stored as int64 (not cast to another signature's int32).
    other = tmp_path / "other" / "1"
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", lambda ids: {"ids": ids},
                         input_signature=[tf.TensorSpec(None, tf.int64, name="ids")])
    write_archive(archive, str(other), [("serving_default", {"ids": np.array([2**40], np.int64)})])
    assert read_warmup_requests(str(other))[0][1]["ids"].tolist() == [2**40]
    with pytest.raises(FileNotFoundError, match="No warmup file at"):
        read_warmup_requests(str(tmp_path))


def test_requests_are_checked_against_the_signatures():
    signatures = {"serving_default": {"text": tf.string},
                  "serving_ids": {"token_ids": tf.int32, "mask": tf.int32}}
    text = ("serving_default", {"text": ["a"]})
    for requests, message in (
        ([], "at least one request"),
        ([text], r"No warmup request for signatures \['serving_ids'\]"),
        ([text, ("serving_id", IDS)], r"signature 'serving_id', which the SavedModel lacks"),
        ([text, ("serving_ids", {"token_ids": IDS["token_ids"]})],
         r"has inputs \['token_ids'\]; the signature takes \['mask', 'token_ids'\]"),
        ([text, ("serving_ids", {k: v.astype(np.int64) for k, v in IDS.items()})],
         "input `token_ids` is int64; the signature takes int32"),
        ([text] * (MAX_WARMUP_REQUESTS + 1), "TF Serving reads at most 1000"),
    ):
        with pytest.raises(ValueError, match=message):
            check_warmup_requests(signatures, requests)
    check_warmup_requests(signatures, [text, ("serving_ids", IDS)])


def test_bad_requests_leave_no_saved_model(tmp_path):
    """The warmup file is written in the temporary folder: a refused request publishes nothing."""
    path = tmp_path / "model" / "1"
    with pytest.raises(ValueError, match=r"No warmup request for signatures \['serving_ids'\]"):
        write_archive(_archive(), str(path), [("serving_default", {"text": ["a"]})])
    assert os.listdir(tmp_path / "model") == []  # no version, no temporary folder
