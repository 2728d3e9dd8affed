"""Fill-mask (`serving_fill_mask`) against HuggingFace `BertForMaskedLM`, and the encoder
SavedModel as TF Serving sees it: its warmup file replayed in a fresh process, `saved_model_cli`."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kbert import checkpoints
from kbert.models import BertEncoder, BertPretrainer
from kbert.serving import ExportVerificationError, export_saved_model
from kbert.serving.fill_mask import (
    FILL_MASK_SIGNATURE,
    compare_fill_mask,
    fill_mask,
    load_masked_lm,
    tokenize_with_masks,
)
from kbert.serving.saved_model import run_requests_in_fresh_process
from kbert.serving.warmup import read_warmup_requests, signature_inputs, warmup_path
from tests.numpy_bert import randomize
from tests.test_export import _packed

LENGTH = 16  # packed length of the export: two of TEXTS are cut
TOP_K = 4
TEXTS = [
    "Paris is the [MASK] of France.",
    "[MASK] [MASK] went to the store[MASK]",  # at the start, side by side, glued to a word
    "",
    "no mask here, and [mask] in lower case is only text",
    "the quick brown fox " * 4 + "[MASK] end",  # the only mask is past the cut
    "a [MASK] " + "word " * 20 + "[MASK]",  # the first mask fits, the second is cut
]
SIGNATURES = {
    # signature -> (inputs, outputs), as `saved_model_cli show --all` lists them
    "serving_default": (["text"], ["num_wordpieces", "padding_mask", "pooled_output",
                                   "sequence_output", "truncated"]),
    "serving_token_ids": (["padding_mask", "segment_ids", "token_ids"],
                          ["pooled_output", "sequence_output"]),
    "serving_token_ids_int64": (["padding_mask", "segment_ids", "token_ids"],
                                ["pooled_output", "sequence_output"]),
    "serving_wordpieces": (["text"], ["num_wordpieces", "token_ids", "truncated", "wordpieces"]),
    "serving_fill_mask": (["text"], ["mask_positions", "num_masks", "num_wordpieces",
                                     "top_probabilities", "top_token_ids", "top_tokens",
                                     "truncated"]),
}


@pytest.fixture(scope="module")
def pretrainer(uncased_tokenizer):
    """One block, hidden size 32, the uncased vocabulary; weights of scale 0.5, so the
    masked-LM distribution is peaked (top ranks far apart, no near-ties)."""
    encoder = BertEncoder(vocab_size=uncased_tokenizer.vocab_size, hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64)
    model = BertPretrainer(encoder)
    randomize(model, seed=11)
    return model


@pytest.fixture(scope="module")
def saved_model(pretrainer, uncased_tokenizer, uncased_vocab, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "bert"
    return export_saved_model(pretrainer, uncased_tokenizer, uncased_vocab, str(base),
                              sequence_length=LENGTH, top_k=TOP_K)


def _transformers_fill_mask(hf_model, hf_tokenizer, texts, length, top_k):
    """Fill-mask computed by HuggingFace: its tokenizer, `BertForMaskedLM` logits, NumPy softmax."""
    import torch

    batch = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt")
    with torch.no_grad():
        logits = hf_model(**batch).logits.double().numpy()
    ids = batch["input_ids"].numpy()
    counts = [len(hf_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    rows = [np.flatnonzero(row == hf_tokenizer.mask_token_id) for row in ids]
    width = max(len(r) for r in rows)
    out = {"mask_positions": np.full((len(texts), width), -1),
           "top_token_ids": np.full((len(texts), width, top_k), -1),
           "top_probabilities": np.zeros((len(texts), width, top_k)),
           "top_tokens": np.full((len(texts), width, top_k), "", dtype=object),
           "num_masks": np.array([len(r) for r in rows]),
           "num_wordpieces": np.array(counts),
           "truncated": np.array(counts) > length - 2}
    for b, positions in enumerate(rows):
        for m, position in enumerate(positions):
            scores = logits[b, position]
            probabilities = np.exp(scores - scores.max())
            probabilities /= probabilities.sum()
            best = np.argsort(-probabilities, kind="stable")[:top_k]
            out["mask_positions"][b, m] = position
            out["top_token_ids"][b, m] = best
            out["top_probabilities"][b, m] = probabilities[best]
            out["top_tokens"][b, m] = hf_tokenizer.convert_ids_to_tokens(best.tolist())
    return out


def test_fill_mask_matches_transformers_bert_for_masked_lm(pretrainer, uncased_tokenizer,
                                                           uncased_vocab, hf_tokenizer, tmp_path):
    """kbert's head, saved in HF layout, read by `BertForMaskedLM`: the same top-k at every mask."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    checkpoints.save(pretrainer, str(folder), vocab_path=uncased_vocab)
    hf_model, info = transformers.BertForMaskedLM.from_pretrained(str(folder),
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info  # the head was read
    hf_model.eval()
    expected = _transformers_fill_mask(hf_model, hf_tokenizer, TEXTS, LENGTH, TOP_K)
    actual = fill_mask(pretrainer, uncased_tokenizer, TEXTS, TOP_K, sequence_length=LENGTH)
    assert compare_fill_mask(actual, expected, 1e-5, "kbert fill_mask") <= 1e-5
    assert actual["num_masks"].tolist() == [1, 3, 0, 0, 0, 1]
    assert actual["truncated"].tolist() == [False, False, False, False, True, True]
    assert actual["top_probabilities"][0, 0, 0] > 2 * actual["top_probabilities"][0, 0, 1]
    # [MASK] is one id, never "[", "mask", "]"; ids equal HF's before packing.
    ids = tokenize_with_masks(uncased_tokenizer, tf.constant(TEXTS)).to_list()
    assert ids == [hf_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    # The head reloads from the HF folder (`BertForPreTraining` layout) for an export.
    encoder, reloaded = load_masked_lm(str(folder))
    again = fill_mask(reloaded, uncased_tokenizer, TEXTS, TOP_K, sequence_length=LENGTH)
    np.testing.assert_array_equal(again["top_token_ids"], actual["top_token_ids"])
    assert reloaded.encoder is encoder


def test_saved_model_stores_the_encoder_and_head_once(saved_model, pretrainer):
    from tests.saved_model_requests import stored_tensors

    shapes = sorted(tuple(shape) for shape in stored_tensors(saved_model).values())
    # Every weight but the next-sentence head's (no signature uses it), each once.
    nsp = {id(w) for w in pretrainer.next_sentence_head.weights}
    assert shapes == sorted(tuple(w.shape) for w in pretrainer.weights if id(w) not in nsp)


def test_load_masked_lm_without_a_head(pretrainer, tmp_path):
    checkpoints.save(pretrainer.encoder, str(tmp_path / "encoder"))
    encoder, head = load_masked_lm(str(tmp_path / "encoder"))
    assert head is None and encoder.count_params() == pretrainer.encoder.count_params()


def _keras_outputs(signature, inputs, pretrainer, tokenizer):
    """What the Keras models give for one request: the reference of every signature."""
    encoder = pretrainer.encoder
    if "text" in inputs:  # (an empty batch too)
        text = tf.constant(np.asarray(inputs["text"]).tolist(), tf.string, [len(inputs["text"])])
    if signature == FILL_MASK_SIGNATURE:
        return fill_mask(pretrainer, tokenizer, text, TOP_K, LENGTH)
    if "text" in inputs:
        features = _packed(tokenizer, text, LENGTH)
        counts = tokenizer(text).row_lengths().numpy()
        expected = {"num_wordpieces": counts, "truncated": counts > LENGTH - 2}
        if signature == "serving_wordpieces":
            return dict(expected, token_ids=features["token_ids"],
                        wordpieces=np.array(tokenizer.vocabulary)[features["token_ids"]])
        return dict(expected, padding_mask=features["padding_mask"],
                    **{k: v.numpy() for k, v in encoder(features).items()})
    return {k: v.numpy() for k, v in encoder({k: v.astype("int32") for k, v in inputs.items()}).items()}


def _assert_outputs_equal(actual, expected, padding_mask, what):
    assert sorted(actual) == sorted(expected), what
    for name, want in expected.items():
        got = actual[name]
        if name == "sequence_output":
            mask = np.asarray(padding_mask).astype(bool)
            got, want = got[mask], want[mask]
        if np.asarray(want).dtype.kind == "f":
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{what}: {name}")
        else:
            np.testing.assert_array_equal(np.asarray(got).astype(np.asarray(want).dtype), want,
                                          err_msg=f"{what}: {name}")


# The requests BUILD.md documents (section "Serving with TF Serving"), as a client sends them.
REST_BODIES = {
    "text": '{"instances": ["The quick brown fox jumps over the lazy dog.", ""]}',
    "fill_mask": '{"signature_name": "serving_fill_mask", '
                 '"instances": ["The capital of France is [MASK]."]}',
    "token_ids": '{"signature_name": "serving_token_ids", "inputs": {"token_ids": '
                 '[[101, 7592, 2088, 102]], "segment_ids": [[0, 0, 0, 0]], '
                 '"padding_mask": [[1, 1, 1, 1]]}}',
}
GRPC_SNIPPET = """\
import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
request = predict_pb2.PredictRequest()
request.model_spec.name = "bert"
request.model_spec.signature_name = "serving_fill_mask"
request.inputs["text"].CopyFrom(tf.make_tensor_proto(["The capital of France is [MASK]."]))
response = stub.Predict(request, timeout=10.0)
tokens = tf.make_ndarray(response.outputs["top_tokens"])  # bytes [B, M, k]
probabilities = tf.make_ndarray(response.outputs["top_probabilities"])  # float32 [B, M, k]
print([t.decode() for t in tokens[0, 0]], probabilities[0, 0])
"""


def _documented_requests():
    """The REST bodies and gRPC snippet of BUILD.md once the section is there, else the above."""
    from tests.conftest import REPO

    build = (REPO / "BUILD.md").read_text(encoding="utf-8")
    if "## Serving with TF Serving" not in build:
        return REST_BODIES, GRPC_SNIPPET  # the text handed over for BUILD.md
    section = build.split("## Serving with TF Serving", 1)[1].split("\n## ", 1)[0]
    bodies = [part.split("'", 1)[0] for part in section.split("-d '")[1:]]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert bodies == list(REST_BODIES.values()) and snippet == GRPC_SNIPPET, \
        "BUILD.md's TF Serving requests differ from the tested ones"
    return REST_BODIES, snippet


def _rest_inputs(body, signatures):
    """TF Serving's JSON-to-tensor rules (REST API guide): `instances` (row format: one value,
    or one object of named values, per batch row) or `inputs` (columnar), cast to the dtypes
    of the signature, `serving_default` unless `signature_name` says otherwise."""
    import json

    request = json.loads(body)
    signature = request.get("signature_name", "serving_default")
    names = sorted(signatures[signature])
    if "instances" in request:
        rows = request["instances"]
        columns = ({name: [row[name] for row in rows] for name in names}
                   if isinstance(rows[0], dict) else {names[0]: rows})
    else:
        columns = request["inputs"] if isinstance(request["inputs"], dict) else {
            names[0]: request["inputs"]}
    assert sorted(columns) == names, (signature, sorted(columns), names)
    return signature, {name: np.asarray(value, signatures[signature][name].as_numpy_dtype)
                       for name, value in columns.items()}


def _grpc_request(snippet):
    """Runs the gRPC client snippet with a stub that keeps the request instead of sending it."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Stub:
        def __init__(self, channel):
            pass

        def Predict(self, request, timeout):  # the gRPC method
            Stub.request = request
            raise _Sent

    class _Sent(Exception):
        pass

    original = prediction_service_pb2_grpc.PredictionServiceStub
    prediction_service_pb2_grpc.PredictionServiceStub = Stub
    try:
        exec(compile(snippet, "BUILD.md", "exec"), {})  # noqa: S102 (our own documentation)
    except _Sent:
        pass
    finally:
        prediction_service_pb2_grpc.PredictionServiceStub = original
    request = Stub.request
    assert request.model_spec.name == "bert"
    return request.model_spec.signature_name, {
        name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


RAW = [t.encode() for t in TEXTS] + [b"caf\xe9 [MASK] \xff\xfe"]  # invalid UTF-8 too


@pytest.fixture(scope="module")
def replies(saved_model):
    """One fresh process (only the folder, as TF Serving loads it) answers every request here:
    the warmup file's, fill-mask and text batches (invalid UTF-8, 1 and 256 rows), BUILD.md's."""
    signatures = signature_inputs(saved_model)
    rest, snippet = _documented_requests()
    named = {f"warmup {i}": request for i, request in enumerate(read_warmup_requests(saved_model))}
    named.update({
        "fill_mask": (FILL_MASK_SIGNATURE, {"text": np.array(RAW, dtype=object)}),
        "fill_mask batch 1": (FILL_MASK_SIGNATURE, {"text": ["[MASK]"]}),
        "fill_mask batch 0": (FILL_MASK_SIGNATURE, {"text": np.array([], object)}),
        "text batch 0": ("serving_default", {"text": np.array([], object)}),
        "fill_mask batch 256": (FILL_MASK_SIGNATURE, {
            "text": np.array([RAW[i % len(RAW)] for i in range(256)], dtype=object)}),
        "text": ("serving_default", {"text": np.array(RAW, dtype=object)}),
        "wordpieces": ("serving_wordpieces", {"text": np.array(RAW, dtype=object)}),
        "grpc": _grpc_request(snippet),
        **{f"rest {name}": _rest_inputs(body, signatures) for name, body in rest.items()},
    })
    served = run_requests_in_fresh_process(saved_model, list(named.values()))
    return {name: (request, outputs) for (name, request), outputs in zip(named.items(), served)}


def _check_against_keras(name, request, actual, pretrainer, tokenizer):
    signature, inputs = request
    expected = _keras_outputs(signature, inputs, pretrainer, tokenizer)
    what = f"{name}: {signature} on {len(next(iter(inputs.values())))} rows"
    if signature == FILL_MASK_SIGNATURE:
        assert sorted(actual) == sorted(expected), what
        assert compare_fill_mask(actual, expected, 1e-5, what) <= 1e-5
        assert actual["top_token_ids"].shape[-1] == TOP_K
    else:
        mask = expected.get("padding_mask", inputs.get("padding_mask"))
        _assert_outputs_equal(actual, expected, mask, what)


def test_warmup_file_covers_every_signature_and_each_request_runs(saved_model, replies, pretrainer,
                                                                  uncased_tokenizer):
    warmup = read_warmup_requests(saved_model)  # parses as PredictionLogs
    assert warmup_path(saved_model) == os.path.join(saved_model, "assets.extra",
                                                    "tf_serving_warmup_requests")
    assert {s for s, _ in warmup} == set(signature_inputs(saved_model)) == set(SIGNATURES)
    assert {s: inputs["token_ids"].dtype for s, inputs in warmup if "token_ids" in inputs} == {
        "serving_token_ids": np.int32, "serving_token_ids_int64": np.int64}
    for i in range(len(warmup)):
        request, actual = replies[f"warmup {i}"]
        _check_against_keras(f"warmup {i}", request, actual, pretrainer, uncased_tokenizer)


def test_fill_mask_and_truncation_in_fresh_process(replies, pretrainer, uncased_tokenizer):
    for name in ("fill_mask", "fill_mask batch 1", "fill_mask batch 256", "fill_mask batch 0",
                 "text", "text batch 0", "wordpieces"):
        _check_against_keras(name, *replies[name], pretrainer, uncased_tokenizer)
    filled = replies["fill_mask"][1]
    assert filled["num_masks"].tolist() == [1, 3, 0, 0, 0, 1, 1]
    assert filled["truncated"].tolist() == [False] * 4 + [True, True, False]
    # Padding of the mask axis: -1 positions and ids, "" tokens, probability 0.
    assert filled["mask_positions"][0].tolist() == [4, -1, -1]
    assert filled["top_tokens"][0, 1].tolist() == [""] * TOP_K
    assert (filled["top_probabilities"][2] == 0).all() and (filled["top_token_ids"][2] == -1).all()
    assert replies["text"][1]["truncated"].tolist() == [False] * 4 + [True, True, False]
    assert replies["fill_mask batch 256"][1]["top_tokens"].shape == (256, 3, TOP_K)
    assert replies["fill_mask batch 0"][1]["top_tokens"].shape == (0, 0, TOP_K)


def test_documented_rest_and_grpc_requests_match_the_signatures(replies, pretrainer,
                                                                uncased_tokenizer):
    """BUILD.md's curl bodies and gRPC snippet, mapped onto the signatures as TF Serving maps
    them, run and give the Keras outputs (no server here: the mapping is TF Serving's rules)."""
    for name in ("rest text", "rest fill_mask", "rest token_ids", "grpc"):
        _check_against_keras(name, *replies[name], pretrainer, uncased_tokenizer)
    assert replies["grpc"][0][0] == replies["rest fill_mask"][0][0] == FILL_MASK_SIGNATURE
    np.testing.assert_array_equal(replies["grpc"][1]["top_tokens"],
                                  replies["rest fill_mask"][1]["top_tokens"])


def test_compare_fill_mask_catches_a_different_token(pretrainer, uncased_tokenizer):
    expected = fill_mask(pretrainer, uncased_tokenizer, TEXTS[:2], TOP_K, LENGTH)
    swapped = {k: v.copy() for k, v in expected.items()}
    swapped["top_token_ids"][0, 0, [0, 1]] = swapped["top_token_ids"][0, 0, [1, 0]]
    with pytest.raises(ExportVerificationError, match="text 0, mask 0, rank 0: token id"):
        compare_fill_mask(swapped, expected, 1e-5, "swapped")
    moved = dict(expected, mask_positions=expected["mask_positions"] + 1)
    with pytest.raises(ExportVerificationError, match="`mask_positions` is"):
        compare_fill_mask(moved, expected, 1e-5, "moved")
    with pytest.raises(ValueError, match=r"top_k=0 must be an int in \[1, vocab_size=30522\]"):
        fill_mask(pretrainer, uncased_tokenizer, TEXTS, top_k=0)


_CLI_SCRIPT = """
import json, sys
import tensorflow_text  # the tokenizer ops (TF Serving's model server links them in)
from tensorflow.python.tools import saved_model_cli  # what the saved_model_cli program runs
for arguments in json.loads(sys.argv[1]):
    sys.argv = ["saved_model_cli", *arguments]
    try:
        saved_model_cli.main()
    except SystemExit as end:
        assert not end.code, end.code
    print("=== end of command ===", flush=True)
"""


def _saved_model_cli(*commands):
    """Runs `saved_model_cli` commands (lists of arguments) in one new process; their outputs.

    Without `import tensorflow_text`, `show` works but `run` fails for every signature, the ids
    ones too ("Op type not registered 'NormalizeUTF8'"): the graph is loaded whole, as TF
    Serving loads it."""
    import json

    proc = subprocess.run([sys.executable, "-c", _CLI_SCRIPT, json.dumps(commands)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split("=== end of command ===")[:-1]


def test_saved_model_cli_shows_the_signatures_and_runs_the_ids_signature(saved_model, pretrainer,
                                                                         tmp_path):
    ids = [[101, 3000, 2003, 1996, 103, 102], [101, 7592, 102, 0, 0, 0]]
    mask = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    shown, _ = _saved_model_cli(
        ["show", "--dir", saved_model, "--all"],
        ["run", "--dir", saved_model, "--tag_set", "serve", "--signature_def",
         "serving_token_ids", "--outdir", str(tmp_path), "--input_exprs",
         f"token_ids={ids};segment_ids={[[0] * 6] * 2};padding_mask={mask}"])
    blocks = shown.split("The MetaGraph with tag set")[0].split("signature_def['")[1:]
    listed = {block.split("'")[0]: block for block in blocks}
    assert set(listed) == set(SIGNATURES) | {"__saved_model_init_op"}
    for name, (inputs, outputs) in SIGNATURES.items():
        block = listed[name]
        assert sorted(block.split("inputs['")[i].split("'")[0]
                      for i in range(1, len(inputs) + 1)) == inputs, name
        assert sorted(part.split("'")[0] for part in block.split("outputs['")[1:]) == outputs, name
        assert "Method name is: tensorflow/serving/predict" in block
    assert "dtype: DT_BOOL" in listed["serving_default"].split("outputs['truncated']")[1]
    expected = pretrainer.encoder({"token_ids": np.array(ids, "int32"),
                                   "segment_ids": np.zeros((2, 6), "int32"),
                                   "padding_mask": np.array(mask, "int32")})
    np.testing.assert_allclose(np.load(tmp_path / "pooled_output.npy"),
                               expected["pooled_output"], atol=1e-4)
