"""Layer checks: build paths, config round trip, precision policies, XLA, masks."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.layers import (
    BertEmbeddings,
    MaskedLMHead,
    PositionEmbedding,
    TransformerEncoderBlock,
)
from tests.numpy_bert import encoder_block, gelu, layer_norm, randomize

B, S, D = 2, 6, 8
POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]


def _block(**kwargs):
    args = dict(num_attention_heads=2, intermediate_size=16, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    args.update(kwargs)
    return TransformerEncoderBlock(**args)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, S, D)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], "int32")
    return x, mask


def _block_weights(block):
    a = lambda v: np.asarray(v.numpy(), np.float64)  # noqa: E731
    return {
        "q_k": a(block.query.kernel), "q_b": a(block.query.bias),
        "k_k": a(block.key.kernel), "k_b": a(block.key.bias),
        "v_k": a(block.value.kernel), "v_b": a(block.value.bias),
        "o_k": a(block.attention_output.kernel), "o_b": a(block.attention_output.bias),
        "ln1_g": a(block.attention_layer_norm.gamma), "ln1_b": a(block.attention_layer_norm.beta),
        "i_k": a(block.intermediate.kernel), "i_b": a(block.intermediate.bias),
        "out_k": a(block.output_dense.kernel), "out_b": a(block.output_dense.bias),
        "ln2_g": a(block.output_layer_norm.gamma), "ln2_b": a(block.output_layer_norm.beta),
    }


# ---------------------------------------------------------------- TransformerEncoderBlock


@pytest.mark.parametrize("hidden_act,approximate", [("gelu", False), ("gelu_approximate", True)])
def test_block_matches_numpy(hidden_act, approximate):
    x, mask = _inputs()
    block = _block(hidden_act=hidden_act, layer_norm_eps=1e-12)
    block.build((None, None, D))
    randomize(block)
    out = block(x, padding_mask=mask).numpy()
    expected = encoder_block(x.astype(np.float64), mask.astype(np.float64),
                             _block_weights(block), 2, 1e-12, approximate)
    m = mask.astype(bool)
    np.testing.assert_allclose(out[m], expected[m], atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_output_length_matches_numpy_rows(norm_first):
    # Only the first rows are computed (keys/values still see all tokens): they equal the
    # NumPy reference's rows, in eager, symbolic and XLA calls.
    x, mask = _inputs()
    block = _block(norm_first=norm_first, layer_norm_eps=1e-12)
    block.build((None, None, D))
    randomize(block)
    full = block(x, padding_mask=mask).numpy()
    if not norm_first:
        expected = encoder_block(x.astype(np.float64), mask.astype(np.float64),
                                 _block_weights(block), 2, 1e-12, False)
        np.testing.assert_allclose(full[:, :2], expected[:, :2], atol=1e-5)
    first = block(x, padding_mask=mask, output_length=2).numpy()
    assert first.shape == (B, 2, D)
    np.testing.assert_allclose(first, full[:, :2], atol=1e-5)
    symbolic = block(keras.Input((None, D)), padding_mask=keras.Input((None,)), output_length=1)
    assert tuple(symbolic.shape) == (None, 1, D)
    xla = tf.function(lambda a, m: block(a, padding_mask=m, output_length=1), jit_compile=True)
    np.testing.assert_allclose(xla(x, mask).numpy(), full[:, :1], atol=1e-5)


def test_block_exact_and_tanh_gelu_differ():
    x, mask = _inputs()
    exact = _block(hidden_act="gelu")
    approx = _block(hidden_act="gelu_approximate")
    exact(x, padding_mask=mask)
    approx(x, padding_mask=mask)
    randomize(exact)
    approx.set_weights(exact.get_weights())
    diff = np.abs(exact(x, padding_mask=mask) - approx(x, padding_mask=mask)).max()
    assert diff > 1e-6


def test_block_build_three_ways_agree():
    x, mask = _inputs()
    eager = _block()
    eager_out = eager(x, padding_mask=mask)
    explicit = _block()
    explicit.build((None, None, D))
    explicit.set_weights(eager.get_weights())
    symbolic = _block()
    sym_in = keras.Input((None, D))
    sym_mask = keras.Input((None,), dtype="int32")
    model = keras.Model([sym_in, sym_mask], symbolic(sym_in, padding_mask=sym_mask))
    symbolic.set_weights(eager.get_weights())
    np.testing.assert_allclose(explicit(x, padding_mask=mask), eager_out, atol=1e-6)
    np.testing.assert_allclose(model([x, mask]), eager_out, atol=1e-6)


def test_block_config_round_trip():
    block = _block(hidden_act="gelu_approximate", layer_norm_eps=1e-6, norm_first=True)
    block.build((None, None, D))
    clone = TransformerEncoderBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    clone.build((None, None, D))
    clone.set_weights(block.get_weights())
    x, mask = _inputs()
    np.testing.assert_allclose(clone(x, padding_mask=mask), block(x, padding_mask=mask), atol=1e-6)
    assert block.attention_layer_norm.epsilon == 1e-6


@pytest.mark.parametrize("mask_dtype", ["bool", "int32", "float32"])
def test_block_mask_dtypes_agree(mask_dtype):
    x, mask = _inputs()
    block = _block()
    reference = block(x, padding_mask=mask.astype("int32"))
    np.testing.assert_allclose(block(x, padding_mask=mask.astype(mask_dtype)), reference, atol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_padding_invariance(norm_first):
    x, _ = _inputs()
    block = _block(norm_first=norm_first)
    short = block(x[:, :4], padding_mask=np.ones((B, 4), "int32")).numpy()
    padded_x = np.concatenate([x[:, :4], np.random.default_rng(1).normal(size=(B, 3, D))], 1)
    padded_mask = np.concatenate([np.ones((B, 4)), np.zeros((B, 3))], 1).astype("int32")
    long = block(padded_x.astype("float32"), padding_mask=padded_mask).numpy()
    np.testing.assert_allclose(long[:, :4], short, atol=1e-5)


@pytest.mark.parametrize("policy", POLICIES)
def test_block_precision_policies(policy):
    x, mask = _inputs()
    reference = _block()
    expected = reference(x, padding_mask=mask).numpy()
    block = _block(dtype=policy)
    out = block(x, padding_mask=mask)
    block.set_weights(reference.get_weights())
    out = block(x, padding_mask=mask)
    assert block.attention_layer_norm.compute_dtype == "float32"
    assert out.dtype == keras.dtype_policies.get(policy).compute_dtype
    out = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")))
    assert np.isfinite(out).all()
    tolerance = {"float32": 1e-6, "mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}[policy]
    m = mask.astype(bool)
    np.testing.assert_allclose(out[m], expected[m], atol=tolerance)


def test_block_float16_large_activations_finite():
    # Scores of ~1e3 overflow float16 softmax inputs unless computed in float32.
    block = _block(dtype="mixed_float16")
    x, mask = _inputs()
    out = block(30.0 * x, padding_mask=mask)
    assert np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))).all()


def test_block_xla_matches_eager():
    x, mask = _inputs()
    block = _block()
    eager = block(x, padding_mask=mask)
    xla = tf.function(lambda a, b: block(a, padding_mask=b), jit_compile=True)(x, mask)
    np.testing.assert_allclose(xla, eager, atol=1e-5)


def test_block_bad_arguments():
    with pytest.raises(ValueError, match="num_attention_heads"):
        TransformerEncoderBlock(num_attention_heads=0, intermediate_size=4)
    with pytest.raises(ValueError, match="divisible"):
        _block(num_attention_heads=3).build((None, None, D))
    with pytest.raises(ValueError, match="Unknown activation"):
        _block(hidden_act="gelu_wrong")


def test_block_dropout_only_in_training():
    x, mask = _inputs()
    block = _block(hidden_dropout_prob=0.5)
    a = block(x, padding_mask=mask, training=False)
    np.testing.assert_allclose(block(x, padding_mask=mask, training=False), a)
    assert np.abs(block(x, padding_mask=mask, training=True) - a).max() > 1e-3


# ---------------------------------------------------------------- PositionEmbedding


def test_position_embedding_values_and_round_trip():
    layer = PositionEmbedding(max_position_embeddings=10)
    out = layer(np.zeros((2, 4, 3), "float32")).numpy()
    table = layer.embeddings.numpy()
    np.testing.assert_array_equal(out[0], table[:4])
    np.testing.assert_array_equal(out[1], table[:4])
    clone = PositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_position_embedding_static_too_long():
    layer = PositionEmbedding(max_position_embeddings=5)
    with pytest.raises(ValueError, match=r"Sequence length 6 exceeds max_position_embeddings=5"):
        layer(np.zeros((1, 6, 3), "float32"))


def test_position_embedding_dynamic_too_long():
    layer = PositionEmbedding(max_position_embeddings=5)
    layer.build((None, None, 3))
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 3])])
    assert fn(tf.zeros((1, 5, 3))).shape == (1, 5, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_position_embeddings=5"):
        fn(tf.zeros((1, 7, 3)))


@pytest.mark.parametrize("policy", POLICIES)
def test_position_embedding_policies_and_xla(policy):
    layer = PositionEmbedding(max_position_embeddings=8, dtype=policy)
    out = layer(np.zeros((1, 3, 4), "float32"))
    assert out.dtype == keras.dtype_policies.get(policy).compute_dtype
    xla = tf.function(layer, jit_compile=True)(tf.zeros((1, 3, 4)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(xla, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
    )


# ---------------------------------------------------------------- BertEmbeddings


def test_bert_embeddings_matches_numpy():
    layer = BertEmbeddings(vocab_size=20, hidden_size=D, max_position_embeddings=10, hidden_dropout_prob=0.0)
    ids = np.array([[1, 5, 7, 0]], "int32")
    seg = np.array([[0, 0, 1, 1]], "int32")
    out = layer(ids, seg).numpy()
    expected = layer_norm(
        layer.token_embedding.embeddings.numpy()[ids]
        + layer.segment_embedding.embeddings.numpy()[seg]
        + layer.position_embedding.embeddings.numpy()[:4][None],
        layer.layer_norm.gamma.numpy(), layer.layer_norm.beta.numpy(), 1e-12,
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Boolean and narrow integer ids are the same ids, in training too (one-hot path).
    for dtype in (bool, "int8", "int16", "uint8", "uint16", "uint32"):
        for training in (False, True):
            np.testing.assert_allclose(layer(ids.astype("uint8" if dtype is bool else dtype),
                                             seg.astype(dtype), training=training).numpy(),
                                       expected, atol=1e-5)
    # Segment ids whose shape differs from the token ids' are refused, not broadcast.
    with pytest.raises(ValueError, match=r"same shape .* received \(1, 4\) and \(1, 1\)"):
        layer(ids, seg[:, :1])
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have the same shape"):
        dynamic(tf.constant(ids), tf.constant([[0], [1]], tf.int32))
    # Training (segment vectors by a one-hot MatMul): the same values, and the
    # segment table's gradient equals autodiff of the lookup's.
    upstream = tf.constant(np.random.default_rng(0).normal(size=out.shape), tf.float32)
    grads = []
    for training in (True, False):
        with tf.GradientTape() as tape:
            y = layer(ids, seg, training=training)
            loss = tf.reduce_sum(y * upstream)
        np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
        grads.append(tf.convert_to_tensor(tape.gradient(loss, layer.segment_embedding.embeddings)).numpy())
    assert np.abs(grads[1]).min() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    clone = BertEmbeddings.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_bert_embeddings_range_check_fits_narrow_id_dtypes():
    # A limit above the dtype's range (300 for uint8) must not wrap: 200 is a valid id.
    layer = BertEmbeddings(vocab_size=300, hidden_size=D, hidden_dropout_prob=0.0)
    ids = np.array([[1, 2, 50, 200]], "uint8")
    seg = np.zeros((1, 4), "uint8")
    np.testing.assert_allclose(layer(ids, seg).numpy(), layer(ids.astype("int32"), seg.astype("int32")).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds an id >= 2"):
        layer(ids, np.full((1, 4), 2, "uint8"))


@pytest.mark.parametrize("policy", POLICIES)
def test_bert_embeddings_policies(policy):
    layer = BertEmbeddings(vocab_size=20, hidden_size=D, dtype=policy)
    out = layer(np.ones((1, 4), "int32"), np.zeros((1, 4), "int32"))
    assert out.dtype == keras.dtype_policies.get(policy).compute_dtype
    assert layer.layer_norm.compute_dtype == "float32"


# ---------------------------------------------------------------- MaskedLMHead


def _head(policy="float32"):
    embedding = keras.layers.Embedding(12, D, dtype=policy)
    embedding.build((None, None))
    return MaskedLMHead(embedding, dtype=policy), embedding


def test_masked_lm_head_matches_numpy_and_ties_weights():
    head, embedding = _head()
    x, _ = _inputs()
    positions = np.array([[0, 3], [5, 5]], "int32")
    logits = head(x, positions).numpy()
    gathered = np.take_along_axis(x, positions[..., None], axis=1).astype(np.float64)
    h = gelu(gathered @ head.transform.kernel.numpy() + head.transform.bias.numpy())
    h = layer_norm(h, head.layer_norm.gamma.numpy(), head.layer_norm.beta.numpy(), 1e-12)
    expected = h @ embedding.embeddings.numpy().T + head.output_bias.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # A negative position counts from the end (NumPy's and Keras' take_along_axis), and the
    # gradient reaches exactly the gathered rows, summed where a row is gathered twice.
    length = x.shape[1]
    np.testing.assert_allclose(head(x, positions - length).numpy(), logits, atol=1e-6)
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        total = tf.reduce_sum(head(inputs, positions))
    touched = np.abs(tape.gradient(total, inputs).numpy()).sum(-1) > 0
    np.testing.assert_array_equal(np.argwhere(touched), [[0, 0], [0, 3], [1, 5]])
    # Outside [-S, S) (int64 too, no wrap through int32) and non-integer positions: named errors.
    for bad, message in ((length, ">= the sequence length"), (-length - 1, "< -(the sequence length)"),
                         (2**32 + 1, ">= the sequence length")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            head(x, np.array([[0, bad], [1, 1]], "int64"))
    with pytest.raises(TypeError, match="must hold integer positions"):
        head(x, positions.astype("float32"))
    # Tied: changing the embedding changes the logits.
    embedding.embeddings.assign(embedding.embeddings.numpy() * 2.0)
    assert np.abs(head(x, positions).numpy() - logits).max() > 1e-3
    assert len(head.trainable_weights) == 6  # transform (2), LN (2), bias, tied embedding


@pytest.mark.parametrize("policy", POLICIES)
def test_masked_lm_head_float32_logits(policy):
    head, _ = _head(policy)
    x, _ = _inputs()
    logits = head(x, np.array([[1, 2], [3, 4]], "int32"))
    assert logits.dtype == "float32"
    assert np.isfinite(logits.numpy()).all()


def test_masked_lm_head_round_trip_and_xla():
    head, _ = _head()
    x, _ = _inputs()
    positions = np.array([[1, 2], [3, 4]], "int32")
    logits = head(x, positions)
    clone = MaskedLMHead.from_config(head.get_config())
    clone.build((None, None, D))
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(clone(x, positions), logits, atol=1e-6)
    xla = tf.function(head, jit_compile=True)(x, positions)
    np.testing.assert_allclose(xla, logits, atol=1e-5)


def test_masked_lm_head_rejects_bad_embedding():
    with pytest.raises(ValueError, match="keras.layers.Embedding"):
        MaskedLMHead(keras.layers.Dense(3))
    head, _ = _head()
    with pytest.raises(ValueError, match="must equal the token embedding width"):
        head.build((None, None, D + 1))
