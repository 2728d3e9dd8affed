"""Task-model exports (classifier, tagger, question answering) at the boundary: text and
token-id requests checked in the graph and named (issue 9, fault 1), each weight stored once
(fault 5b), atomic writes (fault 4), and the classifier's TFLite runner checking lengths."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kbert.models import (
    BertClassifier,
    BertEncoder,
    BertSpanLabeler,
    BertTokenClassifier,
)
from kbert.serving.classifier_export import (
    export_classifier_saved_model,
    export_classifier_tflite,
    run_classifier_tflite,
)
from kbert.serving.question_answering_export import (
    export_question_answering_saved_model,
)
from kbert.serving.tagger_export import export_tagger_saved_model
from kbert.text import BertTextPreprocessor, BertTokenizer
from tests.numpy_bert import randomize
from tests.saved_model_requests import (
    folder_size,
    requests_in_fresh_process,
    stored_tensors,
    weights_nbytes,
)

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "who", "what", "where", "is", "was",
         "there", "good", "bad", "movie", "film", "very", "not", "and", "it", "in", "of", "to"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!") + WORDS
         + list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
TINY = {"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
LENGTH = 32
TAGS = ["O", "B-X", "I-X"]
KINDS = ("classifier", "classifier_pair", "tagger", "question_answering")
TEXT_INPUTS = {"classifier": ("text",), "classifier_pair": ("text", "text_pair"),
               "tagger": ("text",), "question_answering": ("question", "context")}
GOOD_TEXT = {"text": ["the cat sat on the mat", ""], "text_pair": ["a good film", "what"],
             "question": ["who sat ?", ""], "context": ["the cat sat on the mat .", "there"]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer(str(path))


def _model(kind):
    encoder = BertEncoder(**TINY)
    if kind.startswith("classifier"):
        model = BertClassifier(encoder, num_classes=2)
    elif kind == "tagger":
        model = BertTokenClassifier(encoder, num_classes=len(TAGS))
    else:
        model = BertSpanLabeler(encoder)
    randomize(model, seed=KINDS.index(kind), scale=0.1)
    return model


def _export(kind, model, tokenizer, base, version=1):
    if kind.startswith("classifier"):
        return export_classifier_saved_model(
            model, tokenizer, str(base), ["neg", "pos"], sequence_length=LENGTH,
            num_segments=2 if kind == "classifier_pair" else 1, version=version)
    if kind == "tagger":
        return export_tagger_saved_model(model, tokenizer, str(base), TAGS, LENGTH, version=version)
    return export_question_answering_saved_model(
        model, tokenizer, str(base), sequence_length=LENGTH, max_query_length=8,
        max_answer_length=5, version=version)


@pytest.fixture(scope="module")
def exports(tokenizer, tmp_path_factory):
    """kind -> (model, SavedModel path)."""
    built = {}
    for kind in KINDS:
        model = _model(kind)
        built[kind] = model, _export(kind, model, tokenizer, tmp_path_factory.mktemp(kind) / "model")
    return built


def _ids(batch=2, length=12, dtype="int32"):
    rng = np.random.default_rng(0)
    return {"token_ids": rng.integers(5, len(VOCAB), (batch, length)).astype(dtype),
            "segment_ids": np.zeros((batch, length), dtype),
            "padding_mask": np.ones((batch, length), dtype)}


def _keras_outputs(kind, model, ids):
    out = model(ids)
    if kind.startswith("classifier"):
        return {"logits": out.numpy()}
    if kind == "tagger":
        return {"logits": out.numpy()}
    return {k: v.numpy() for k, v in out.items()}


# --- TF Serving warmup files ---------------------------------------------------------------


def _text_reference(kind, model, tokenizer, inputs):
    """The Keras model on a text request, through the same in-graph text pipeline, eagerly."""
    from kbert.serving.classifier_export import _head_outputs
    from kbert.serving.question_answering_export import answer_questions
    from kbert.serving.tagger_export import tag_words
    from kbert.text import BertWordPacker

    texts = [tf.constant(inputs[name]) for name in TEXT_INPUTS[kind]]
    pieces = sum(tokenizer(t).row_lengths().numpy() for t in texts)
    counts = {"num_wordpieces": pieces, "truncated": pieces > LENGTH - len(texts) - 1}
    if kind == "tagger":
        return tag_words(model, BertWordPacker(tokenizer, LENGTH), tf.constant(TAGS),
                         tf.strings.split(inputs["text"]))
    if kind == "question_answering":
        return answer_questions(model, tokenizer, tf.constant(inputs["question"]),
                                tf.constant(inputs["context"]), LENGTH, 8, 5)
    features = BertTextPreprocessor(tokenizer, LENGTH)(tuple(texts) if len(texts) == 2 else texts[0])
    outputs = _head_outputs(model, features, regression=False)
    label_id = np.argmax(outputs["probabilities"], axis=-1)
    return {**outputs, **counts, "label_id": label_id,
            "label": np.array(["neg", "pos"])[label_id]}


def _decoded(array):
    """An object array of UTF-8 bytes (tf.string) as str."""
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(array)


def _check_warmup_replies(kind, model, tokenizer, warmup, replies):
    """Each warmup request's reply (from the fresh process) against the Keras model."""
    assert [signature for signature, _ in warmup] == [
        "serving_default", "serving_token_ids", "serving_token_ids_int64"]
    for (signature, inputs), reply in zip(warmup, replies):
        outputs = reply["outputs"]
        if signature == "serving_default":
            expected = _text_reference(kind, model, tokenizer, inputs)
            assert sorted(expected) == sorted(outputs), kind
        else:
            assert inputs["token_ids"].dtype == (
                np.int64 if signature.endswith("int64") else np.int32)
            assert inputs["token_ids"].shape == (2, LENGTH)
            expected = _keras_outputs(kind, model, {k: v.astype("int32") for k, v in inputs.items()})
        for name, value in expected.items():
            value = np.asarray(value)
            if value.dtype.kind in "fc":
                np.testing.assert_allclose(outputs[name], value, atol=1e-4,
                                           err_msg=f"{kind} {signature} {name}")
            else:
                value = _decoded(value) if value.dtype == object else value
                np.testing.assert_array_equal(outputs[name], value,
                                              err_msg=f"{kind} {signature} {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_requests_refused_naming_the_input_in_fresh_process(exports, tokenizer, kind):
    """Also: the TF Serving warmup file parses as PredictionLogs, covers every signature, and
    each of its requests runs in the same fresh process with the Keras outputs."""
    from kbert.serving.warmup import read_warmup_requests, signature_inputs

    model, path = exports[kind]
    names = TEXT_INPUTS[kind]
    good_text = {name: GOOD_TEXT[name] for name in names}
    ids = _ids()
    requests = [
        {"signature": "serving_default", "inputs": good_text},
        # Each text input as a scalar, then as a matrix (the others well formed).
        *({"signature": "serving_default", "inputs": dict(good_text, **{name: bad})}
          for name in names for bad in ("a cat", [["a cat", "the dog"]])),
        {"signature": "serving_token_ids", "inputs": ids},
        {"signature": "serving_token_ids_int64", "inputs": ids, "dtypes": dict.fromkeys(ids, "int64")},
        {"signature": "serving_token_ids", "inputs": dict(ids, token_ids=ids["token_ids"][0])},
        {"signature": "serving_token_ids", "inputs": dict(ids, segment_ids=ids["segment_ids"][:, :11])},
        {"signature": "serving_token_ids_int64", "inputs": dict(ids, padding_mask=ids["padding_mask"][:1]),
         "dtypes": dict.fromkeys(ids, "int64")},
        {"signature": "serving_token_ids", "inputs": _ids(1, 65)},
    ]
    if len(names) == 2:
        requests.append({"signature": "serving_default",
                         "inputs": dict(good_text, **{names[1]: good_text[names[1]][:1]})})
    # 40 pieces in each text input of row 0: more than the 32 - 3 a packed row has room for.
    requests.append({"signature": "serving_default",
                     "inputs": {name: ["the cat " * 20, "the cat"] for name in names}})
    warmup = read_warmup_requests(path)
    assert {signature for signature, _ in warmup} == set(signature_inputs(path))
    results = requests_in_fresh_process(path, [
        {"signature": signature,
         "inputs": {k: _decoded(v) if v.dtype == object else v for k, v in inputs.items()},
         "dtypes": {k: str(v.dtype) for k, v in inputs.items() if v.dtype != object}}
        for signature, inputs in warmup] + requests)
    _check_warmup_replies(kind, model, tokenizer, warmup, results[:len(warmup)])
    results = results[len(warmup):]
    assert "outputs" in results[0], results[0]
    assert len(next(iter(results[0]["outputs"].values()))) == 2  # a row for the empty string too
    assert results[0]["outputs"]["truncated"].tolist() == [False, False]
    long = results[-1]["outputs"]
    assert long["num_wordpieces"].tolist() == [40 * len(names), 2 * len(names)]
    assert long["truncated"].tolist() == [True, False]
    text_errors = results[1:1 + 2 * len(names)]
    for i, result in enumerate(text_errors):
        name = names[i // 2]
        assert f"`{name}` must be a batch of strings of shape (batch_size,)" in result["error"], result
    ids32, ids64, rank_1, segments, mask, too_long = results[1 + 2 * len(names):7 + 2 * len(names)]
    expected = _keras_outputs(kind, model, ids)
    for result in (ids32, ids64):
        for key, value in expected.items():
            np.testing.assert_allclose(result["outputs"][key], value, atol=1e-4)
    assert "`token_ids` must be ids of shape (batch_size, sequence_length); received shape] [12]" in rank_1["error"]
    assert "`segment_ids` must have the shape of `token_ids`] [2 12] [received shape] [2 11]" in segments["error"]
    assert "`padding_mask` must have the shape of `token_ids`] [2 12] [received shape] [1 12]" in mask["error"]
    assert ("`token_ids` must have sequence length <= max_position_embeddings=64; received shape] [1 65]"
            in too_long["error"])
    if len(names) == 2:
        assert f"`{names[0]}` and `{names[1]}` must hold the same number of strings" in results[-2]["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_task_exports_store_each_weight_once(exports, kind):
    model, path = exports[kind]
    tensors = stored_tensors(path)
    assert len(tensors) == len(model.weights), sorted(tensors)
    stored = sum(int(np.prod(shape)) * 4 for shape in tensors.values())
    weights = weights_nbytes(model)
    assert stored == weights
    # The variables folder adds only its index and object graph to the weights.
    assert weights <= folder_size(os.path.join(path, "variables")) <= 1.1 * weights + 16_000


@pytest.mark.parametrize("kind", KINDS)
def test_failed_task_export_leaves_nothing(exports, tokenizer, tmp_path, monkeypatch, kind):
    model, _ = exports[kind]
    save = tf.saved_model.save

    def save_then_fail(*args, **kwargs):
        save(*args, **kwargs)
        raise OSError("simulated failure after writing")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    base = tmp_path / "model"
    with pytest.raises(OSError, match="simulated failure"):
        _export(kind, model, tokenizer, base, version=3)
    assert os.listdir(base) == []  # neither the version folder nor a temporary one
    monkeypatch.undo()
    # Validation comes first: an existing version is refused before anything is traced.
    (base / "3").mkdir()
    with pytest.raises(ValueError, match="exists; export to a new version or remove it"):
        _export(kind, model, tokenizer, base, version=3)


def test_classifier_tflite_length_checked_and_written_atomically(exports, tokenizer, tmp_path,
                                                                   monkeypatch):
    model, _ = exports["classifier"]
    path = str(tmp_path / "classifier.tflite")
    export_classifier_tflite(model, path, sequence_length=16)
    features = {k: v.numpy() for k, v in BertTextPreprocessor(tokenizer, 16)(
        tf.constant(["the cat sat", "a film"])).items()}
    expected = tf.nn.softmax(model(features)).numpy()
    np.testing.assert_allclose(run_classifier_tflite(path, features), expected, atol=1e-5)
    longer = {k: np.pad(v, ((0, 0), (0, 4))) for k, v in features.items()}
    with pytest.raises(ValueError, match=r"classifier.tflite takes `token_ids` of shape \(any batch size, 16\) "
                                         r"\(batch size 1, sequence length 16, .*received shape \(2, 20\)"):
        run_classifier_tflite(path, longer)
    with pytest.raises(ValueError, match=r"missing \['padding_mask'\]"):
        run_classifier_tflite(path, {k: features[k] for k in ("token_ids", "segment_ids")})
    # A failure while writing leaves the previous file in place and no temporary file.
    before = Path(path).read_bytes()

    def fail(*args):
        raise OSError("simulated failure in replace")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="simulated failure"):
        export_classifier_tflite(model, path, sequence_length=8)
    monkeypatch.undo()
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["classifier.tflite"]


def test_classifier_export_refuses_repeated_labels(exports, tokenizer, tmp_path):
    model, _ = exports["classifier"]
    with pytest.raises(ValueError, match=r"names \['a'\] more than once"):
        export_classifier_saved_model(model, tokenizer, str(tmp_path / "m"), ["a", "a"],
                                      sequence_length=LENGTH)
    assert not (tmp_path / "m").exists()
