"""The train-step fast paths of kbert's layers: `FastDropout`, the XLA-fused exact GELU and
LayerNorm (`training_activation`, `training_ops`), the block in training, the MLM head's
projection in the compute dtype. References: NumPy (forward, finite differences) and
TensorFlow's own autodiff of the plain layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.layers import (
    FastDropout,
    MaskedLMHead,
    TransformerEncoderBlock,
    get_activation,
    training_activation,
)
from tests.numpy_bert import encoder_block, gelu, randomize
from tests.test_layers import _block, _block_weights


def _values_and_gradients(layer, x, upstream, calls):
    """For each `call(layer, x)`: the output and the gradients of `sum(output * upstream)`
    with respect to `x` and the layer's trainable weights."""
    results = []
    for call in calls:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = call(layer, x)
            loss = tf.reduce_sum(y * upstream)
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_weights])])
    return results


def test_fast_dropout_drops_at_rate_scales_and_masks_the_gradient():
    layer = FastDropout(0.1, seed=3)
    x = tf.constant(np.random.default_rng(0).uniform(1.0, 2.0, (400, 512)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    dropped = y.numpy() == 0
    # 204,800 Bernoulli(0.1) draws: the standard deviation of the fraction is 0.00066.
    assert abs(dropped.mean() - 0.1) < 0.003
    np.testing.assert_allclose(y.numpy()[~dropped], x.numpy()[~dropped] / 0.9, rtol=1e-6)
    gradient = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(gradient, np.where(dropped, 0.0, 1 / 0.9), rtol=1e-6)
    # Columns and rows are dropped independently (both 16-bit halves of each draw are used).
    assert abs(dropped[:, 0::2].mean() - dropped[:, 1::2].mean()) < 0.006
    # Inference is the identity; a new call draws a new mask.
    np.testing.assert_array_equal(layer(x, training=False), x)
    assert (layer(x, training=True).numpy() == 0).mean() > 0.09
    assert not np.array_equal(layer(x, training=True).numpy() == 0, dropped)


def test_fast_dropout_mask_is_the_16_bit_split_of_threefry_draws():
    # The mask, recomputed in NumPy from TensorFlow's own ThreeFry draws for the layer's seed:
    # each uint32 gives two 16-bit integers (little-endian: low half first), an element is
    # kept when its integer is >= round(0.1 * 65536) = 6554.
    layer = FastDropout(0.1, seed=5)
    x = tf.ones((6, 32, 64))
    seed = tf.cast(layer.seed_generator.state.value, tf.int32)  # what the call's next() returns
    dropped = layer(x, training=True).numpy() == 0
    draws = tf.function(
        lambda: tf.random.stateless_uniform(
            (6, 32, 32), seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="threefry"
        ),
        jit_compile=True,
    )().numpy()
    halves = np.stack([draws & 0xFFFF, draws >> 16], axis=-1).reshape(6, 32, 64)
    np.testing.assert_array_equal(dropped, halves < 6554)


def test_fast_dropout_is_reproducible_and_keeps_dtype():
    x = tf.ones((8, 64))
    a = FastDropout(0.5, seed=7, dtype="mixed_bfloat16")(x, training=True)
    b = FastDropout(0.5, seed=7, dtype="mixed_bfloat16")(x, training=True)
    assert a.dtype == tf.bfloat16
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a.numpy().astype("float32"))) == {0.0, 2.0}
    # An odd last dimension takes keras.layers.Dropout's path: same contract.
    odd = FastDropout(0.5, seed=7)(tf.ones((64, 9)), training=True).numpy()
    assert set(np.unique(odd)) == {0.0, 2.0}


@pytest.mark.parametrize("name", ["gelu", "gelu_exact"])
def test_training_gelu_values_match_and_gradient_matches_finite_differences(name):
    x = np.linspace(-7.0, 7.0, 2801)
    lean, plain = training_activation(name), get_activation(name)
    tensor = tf.constant(x, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(tensor)
        y_lean, y_plain = lean(tensor), plain(tensor)
    # BERT's erf form: 1 + erf(x / sqrt(2)) cancels for x < -4 (absolute error < 1e-6).
    np.testing.assert_allclose(y_lean, gelu(x), atol=1e-6, rtol=2e-7)  # NumPy, float64
    np.testing.assert_allclose(y_lean, y_plain, atol=1e-6, rtol=2e-7)
    step = 1e-6
    numeric = (gelu(x + step) - gelu(x - step)) / (2 * step)  # NumPy, float64
    np.testing.assert_allclose(tape.gradient(y_lean, tensor), numeric, atol=2e-6)
    np.testing.assert_allclose(tape.gradient(y_lean, tensor), tape.gradient(y_plain, tensor), atol=3e-7)
    assert training_activation("relu") is get_activation("relu")


def test_layer_norm_for_training_matches_keras_values_and_gradients():
    from kbert.layers import training_ops

    layer = keras.layers.LayerNormalization(epsilon=1e-12)
    layer.build((None, 16))
    randomize(layer)
    rng = np.random.default_rng(4)
    # bfloat16-exact inputs, so Keras' float32 LayerNorm of the same values is the reference.
    x = tf.cast(tf.constant(3.0 + 2.0 * rng.normal(size=(64, 16)), tf.bfloat16), tf.float32)
    upstream = tf.cast(tf.constant(rng.normal(size=(64, 16)), tf.bfloat16), tf.float32)
    results = []
    for dtype, norm in ((tf.bfloat16, training_ops.layer_norm), (tf.float32, lambda layer, x: layer(x))):
        inputs = tf.cast(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = norm(layer, inputs)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        assert y.dtype == dtype
        results.append([tf.cast(t, tf.float32) for t in [y, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])]])
    # One XLA kernel in float32 with float32 gamma/beta; outputs and the input gradient
    # rounded once to bfloat16 (8 significant bits).
    for fused, plain in zip(*results, strict=True):
        np.testing.assert_allclose(fused, plain, rtol=2**-8, atol=2**-8 * np.abs(plain.numpy()).max())
    # float32: the same XLA kernels with the hand-written backward pass, to float32 rounding.
    float32 = _values_and_gradients(layer, x, upstream, (training_ops.layer_norm, lambda layer, x: layer(x)))
    for fused, plain in zip(*float32, strict=True):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5 * np.abs(plain.numpy()).max())
    # A 3-D input and a width whose 1/width is inexact (the row means are dot products).
    wide = keras.layers.LayerNormalization(epsilon=1e-6)
    wide.build((None, None, 24))
    randomize(wide)
    x3 = tf.constant(-5.0 + 3.0 * rng.normal(size=(3, 7, 24)), tf.float32)
    upstream3 = tf.constant(rng.normal(size=(3, 7, 24)), tf.float32)
    float32 = _values_and_gradients(wide, x3, upstream3, (training_ops.layer_norm, lambda layer, x: layer(x)))
    assert float32[0][0].shape == (3, 7, 24)
    for fused, plain in zip(*float32, strict=True):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5 * np.abs(plain.numpy()).max())


def test_training_gelu_on_bfloat16_computes_in_float32_once_rounded():
    x = tf.constant(np.linspace(-5.0, 5.0, 1001), tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = training_activation("gelu")(x)
    gradient = tape.gradient(y, x)
    assert y.dtype == tf.bfloat16 and gradient.dtype == tf.bfloat16
    points = x.numpy().astype(np.float64)
    # One XLA kernel in float32, each result rounded once to bfloat16 (8 significant bits).
    np.testing.assert_allclose(y.numpy().astype(np.float64), gelu(points), rtol=2**-8, atol=1e-6)
    numeric = (gelu(points + 1e-6) - gelu(points - 1e-6)) / 2e-6
    np.testing.assert_allclose(gradient.numpy().astype(np.float64), numeric, rtol=2**-8, atol=1e-6)


def test_block_in_training_matches_numpy_and_tensorflow_autodiff():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], "int32")
    block = TransformerEncoderBlock(num_attention_heads=2, intermediate_size=16,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    block.build((None, None, 8))
    randomize(block)
    upstream = tf.constant(rng.normal(size=x.shape), tf.float32)
    expected = encoder_block(x.astype(np.float64), mask.astype(np.float64), _block_weights(block), 2, 1e-12)
    real = mask.astype(bool)
    gradients = {}
    for training in (True, False):  # True: the XLA GELU and LayerNorms (dropout rate 0)
        with tf.GradientTape() as tape:
            out = block(x, padding_mask=mask, training=training)
            loss = tf.reduce_sum(out * upstream)
        gradients[training] = tape.gradient(loss, block.trainable_weights)
        np.testing.assert_allclose(out.numpy()[real], expected[real], atol=1e-5)
    for lean, plain in zip(gradients[True], gradients[False], strict=True):
        np.testing.assert_allclose(lean, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_masked_lm_head_projection_dtype_and_embedding_gradient(policy):
    embedding = keras.layers.Embedding(50, 8, dtype=policy)
    embedding.build((None, None))
    head = MaskedLMHead(embedding, dtype=policy)
    head.build((None, None, 8))
    randomize(head)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 6, 8)), tf.float32)
    positions = np.array([[0, 3, 5], [5, 5, 1]], "int32")
    upstream = np.random.default_rng(2).normal(size=(2, 3, 50))
    with tf.GradientTape() as tape:
        logits = head(x, positions)
        loss = tf.reduce_sum(logits * upstream)
    assert logits.dtype == tf.float32
    gradient = tape.gradient(loss, embedding.embeddings)
    assert gradient.shape == (50, 8)
    # NumPy: the LayerNorm output h (from the head's own sublayers, float32) gives
    # logits = h E^T + b and dLoss/dE = upstream^T h.
    gathered = np.take_along_axis(x.numpy(), positions[..., None], axis=1)
    h = head.layer_norm(head.activation(head.transform(gathered))).numpy().reshape(-1, 8)
    table = embedding.embeddings.numpy()
    expected_logits = (h @ table.T).reshape(2, 3, 50) + head.output_bias.numpy()
    expected_gradient = upstream.reshape(-1, 50).T @ h
    # float32: exact up to summation order; bfloat16: the operands and each logit rounded
    # to 8 significant bits (products accumulated in float32).
    rtol, atol = (1e-5, 1e-5) if policy == "float32" else (2e-2, 2e-2 * np.abs(expected_logits).max())
    np.testing.assert_allclose(logits, expected_logits, rtol=rtol, atol=atol)
    scale = np.abs(expected_gradient).max()
    np.testing.assert_allclose(gradient, expected_gradient, atol=1e-5 * scale if policy == "float32" else 2e-2 * scale)


def test_block_training_under_mixed_bfloat16_is_close_to_float32():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], "int32")
    reference = _block()  # 2 heads, intermediate 16, no dropout
    reference.build((None, None, 8))
    randomize(reference)
    mixed = _block(dtype="mixed_bfloat16")
    mixed.build((None, None, 8))
    mixed.set_weights(reference.get_weights())
    upstream = tf.constant(rng.normal(size=x.shape), tf.float32)
    results = []
    for block in (reference, mixed):  # mixed: the XLA GELU and LayerNorms in training
        with tf.GradientTape() as tape:
            out = block(x, padding_mask=mask, training=True)
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
        results.append((out, tape.gradient(loss, block.trainable_weights)))
    (want, want_gradients), (got, got_gradients) = results
    assert got.dtype == tf.bfloat16
    real = mask.astype(bool)
    # The tolerance of the forward precision test (test_layers: mixed_bfloat16, 1e-1).
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy()[real], want.numpy()[real], atol=1e-1)
    # 5% of each gradient's largest entry; the key bias's true gradient is 0 (softmax ignores
    # it), so every check gets at least 0.5% of the largest entry of all.
    largest = max(np.abs(g.numpy()).max() for g in want_gradients)
    for plain, lowered in zip(want_gradients, got_gradients, strict=True):
        scale = max(np.abs(plain.numpy()).max(), 0.1 * largest)
        np.testing.assert_allclose(tf.cast(lowered, tf.float32), plain, atol=0.05 * scale)


@pytest.mark.parametrize("units,use_bias", [(24, True), (5, False)])
def test_training_dense_matches_keras_values_and_gradients(units, use_bias):
    from kbert.layers import training_ops

    rng = np.random.default_rng(4)
    layer = keras.layers.Dense(units, use_bias=use_bias)
    layer.build((None, 12))
    randomize(layer)
    x = tf.constant(rng.normal(size=(10, 12)), tf.float32)
    upstream = tf.constant(rng.normal(size=(10, units)), tf.float32)
    results = _values_and_gradients(layer, x, upstream, (training_ops.dense, lambda layer, x: layer(x)))
    for fast, keras_autodiff in zip(*results, strict=True):
        np.testing.assert_allclose(fast, keras_autodiff, rtol=1e-5, atol=1e-6)
    # The input gradient is upstream @ kernel.T (NumPy).
    np.testing.assert_allclose(results[0][1], upstream.numpy() @ layer.kernel.numpy().T, rtol=1e-5, atol=1e-5)
