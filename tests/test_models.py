"""Encoder/pretrainer: NumPy parity, presets, config files, .keras round trip."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.models import PRESETS, BertConfig, BertEncoder, BertPretrainer, preset_config
from tests.numpy_bert import bert_forward, randomize, weights_from_kbert

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=32, max_position_embeddings=20, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)


def _features(batch=3, length=7, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), "int32")
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    return {
        "token_ids": (rng.integers(1, vocab, (batch, length)) * mask).astype("int32"),
        "segment_ids": (rng.integers(0, 2, (batch, length)) * mask).astype("int32"),
        "padding_mask": mask,
    }


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_approximate"])
def test_two_layer_encoder_matches_numpy(hidden_act):
    encoder = BertEncoder(**SMALL, hidden_act=hidden_act)
    randomize(encoder, scale=0.3)
    x = _features()
    out = encoder(x)
    seq, pooled = bert_forward(
        x["token_ids"], x["segment_ids"], x["padding_mask"], weights_from_kbert(encoder),
        num_heads=4, approximate=hidden_act != "gelu",
    )
    m = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(out["sequence_output"].numpy()[m], seq[m], atol=1e-5)
    np.testing.assert_allclose(out["pooled_output"].numpy(), pooled, atol=1e-5)


def test_encoder_padding_invariance_and_xla():
    encoder = BertEncoder(**SMALL)
    randomize(encoder, scale=0.3)
    x = _features()
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in x.items()}
    a = encoder(x)
    b = encoder(padded)
    m = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(b["sequence_output"].numpy()[:, :7][m], a["sequence_output"].numpy()[m], atol=1e-5)
    np.testing.assert_allclose(b["pooled_output"], a["pooled_output"], atol=1e-5)
    xla = tf.function(encoder, jit_compile=True)(x)
    np.testing.assert_allclose(xla["pooled_output"], a["pooled_output"], atol=1e-5)


def test_encoder_too_long_input_names_both_numbers():
    encoder = BertEncoder(**SMALL)
    with pytest.raises(ValueError, match="Sequence length 21 exceeds max_position_embeddings=20"):
        encoder(_features(length=21))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_pretrainer_mixed_precision(policy):
    reference = BertPretrainer(BertEncoder(**SMALL))
    randomize(reference, scale=0.3)
    model = BertPretrainer(BertEncoder(**SMALL, dtype=policy))
    model.set_weights(reference.get_weights())
    x = dict(_features(), masked_lm_positions=np.array([[1, 2], [0, 5], [3, 3]], "int32"))
    out = model(x)
    assert out["masked_lm_logits"].dtype == "float32"
    assert out["next_sentence_logits"].dtype == "float32"
    expected = reference(x)
    for name in out:
        assert np.isfinite(out[name].numpy()).all()
        scale = np.abs(expected[name].numpy()).max()
        np.testing.assert_allclose(out[name], expected[name], atol=0.05 * scale)


def test_presets():
    assert len(PRESETS) == 30
    assert preset_config("bert_base").num_hidden_layers == 12
    large = preset_config("bert_large")
    assert (large.hidden_size, large.num_attention_heads, large.intermediate_size) == (1024, 16, 4096)
    small = preset_config("bert_L6_H256")
    assert (small.num_hidden_layers, small.num_attention_heads, small.intermediate_size) == (6, 4, 1024)
    with pytest.raises(ValueError, match="Unknown preset 'bert_huge'"):
        preset_config("bert_huge")


def test_bert_config_files(tmp_path):
    google = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
              "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
              "type_vocab_size": 2, "vocab_size": 30522}
    (tmp_path / "bert_config.json").write_text(json.dumps(google))
    config = BertConfig.from_json_file(str(tmp_path / "bert_config.json"))
    assert config.layer_norm_eps == 1e-12 and config.hidden_size == 768
    hf = dict(google, architectures=["BertModel"], model_type="bert", layer_norm_eps=1e-5,
              hidden_act="gelu_new", pad_token_id=0, position_embedding_type="absolute")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    config = BertConfig.from_json_file(str(tmp_path / "config.json"))
    assert config.layer_norm_eps == 1e-5 and config.hidden_act == "gelu_new"
    config.to_json_file(str(tmp_path / "out.json"))
    assert BertConfig.from_json_file(str(tmp_path / "out.json")) == config
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig.from_dict(dict(google, position_embedding_type="relative_key"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BertConfig.from_json_file(str(tmp_path / "missing.json"))


def test_encoder_get_config_round_trip():
    encoder = BertEncoder(**SMALL, dtype="mixed_bfloat16")
    clone = BertEncoder.from_config(encoder.get_config())
    assert clone.get_config() == encoder.get_config()
    assert clone.embeddings.dtype_policy.name == "mixed_bfloat16"


def test_keras_file_reloads_in_fresh_process_without_custom_objects(tmp_path):
    model = BertPretrainer(BertEncoder(**SMALL))
    randomize(model, scale=0.3)
    x = dict(_features(), masked_lm_positions=np.array([[1, 2], [0, 5], [3, 3]], "int32"))
    path = str(tmp_path / "pretrainer.keras")
    model.save(path)
    np.savez(tmp_path / "x.npz", **x)
    expected = model(x)
    script = (
        "import sys, numpy as np, keras, kbert  # registers the kbert classes\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "x = dict(np.load(sys.argv[2]))\n"
        "y = m(x)\n"
        "assert m.masked_lm_head.token_embedding is m.encoder.token_embedding\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in y.items()})\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, path, str(tmp_path / "x.npz"), str(tmp_path / "y.npz")],
        check=True, cwd=str(tmp_path),
    )
    y = np.load(tmp_path / "y.npz")
    for name in expected:
        np.testing.assert_array_equal(y[name], expected[name].numpy())


def test_pretrainer_rejects_non_encoder():
    with pytest.raises(ValueError, match="BertEncoder"):
        BertPretrainer(keras.layers.Dense(3))


def test_bad_ids_fail_clearly():
    encoder = BertEncoder(**SMALL)
    x = _features()
    with pytest.raises(TypeError, match="`token_ids` must hold integer ids; received dtype float64"):
        encoder(dict(x, token_ids=x["token_ids"].astype("float64")))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`token_ids` holds a negative id"):
        encoder(dict(x, token_ids=-x["token_ids"] - 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds an id >= 50"):
        encoder(dict(x, token_ids=x["token_ids"] + 50))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`segment_ids` holds an id >= 2"):
        encoder(dict(x, segment_ids=x["segment_ids"] + 2))
    hf = {"input_ids": x["token_ids"], "token_type_ids": x["segment_ids"], "attention_mask": x["padding_mask"]}
    with pytest.raises(ValueError, match="'input_ids' -> 'token_ids'"):
        encoder(hf)
