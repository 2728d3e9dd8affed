"""Exact GELU, LayerNorm and Dense as a train step should run them (TensorFlow backend).

Same values (to within float32 rounding), less time and memory than Keras'
ops under autodiff. GELU and LayerNorm are each one XLA-compiled
elementwise kernel forward and one backward, with hand-written gradients
and float32 arithmetic whatever the input dtype: TensorFlow would run every
elementwise op, and under mixed precision the casts around them, as its own
pass over memory. Compiling the whole train step instead is no faster on
CPUs (XLA's matmuls are not oneDNN's; `benchmarks/train_throughput.py
--jit_compile` measured the same float32 step and a 2x slower
mixed_bfloat16 step for `bert_small`), so only these elementwise chains are
compiled and the matmuls stay with TensorFlow's oneDNN kernels. `dense`
reshapes one float32 MatMul of the backward pass (see there). kbert's
layers call these in training only: inference, SavedModel and TFLite
graphs are unchanged. XLA compiles each new input shape once (a few tenths
of a second).
"""

import functools

import keras

_SQRT_HALF = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2*pi)


def _gelu_forward(x):
    import tensorflow as tf

    x32 = tf.cast(x, tf.float32)
    # x * Phi(x) with google-research/bert's erf form of Phi.
    return tf.cast(x32 * (0.5 + 0.5 * tf.math.erf(x32 * _SQRT_HALF)), x.dtype)


def _gelu_backward(upstream, x):
    import tensorflow as tf

    x32 = tf.cast(x, tf.float32)
    cdf = 0.5 + 0.5 * tf.math.erf(x32 * _SQRT_HALF)  # Phi(x)
    density = tf.exp(-0.5 * tf.square(x32)) * _INV_SQRT_2PI  # phi(x)
    # d/dx x Phi(x) = Phi(x) + x phi(x).
    return tf.cast(tf.cast(upstream, tf.float32) * (cdf + x32 * density), x.dtype)


def _row_means(x):
    """Mean over the last axis of a 2-D float32 tensor, keeping it, as a matrix-vector product.

    XLA's CPU backend emits row reductions as loops slower than its dot (a
    matrix-vector product): on `(4096, 512)` float32 the LayerNorm forward
    took 1.0-1.4 ms this way against 1.5-2.0 ms with `reduce_mean`, the
    backward 2.3-3.5 against 3.3-3.9 ms (Zen 4, 2 threads).
    """
    import tensorflow as tf

    width = tf.shape(x)[-1]
    return tf.matmul(x, tf.fill(tf.stack([width, 1]), 1.0 / tf.cast(width, tf.float32)))


def _column_sums_of(x):
    """Sum over the first axis of a 2-D float32 tensor as a `(1, rows) x (rows, cols)` dot."""
    import tensorflow as tf

    return tf.matmul(tf.ones(tf.stack([1, tf.shape(x)[0]]), x.dtype), x)[0]


def _layer_norm_forward(x, gamma, beta, epsilon):
    import tensorflow as tf

    # keras.ops.layer_normalization's float32 expression (mean, then the mean
    # of squared deviations); also returns the row statistics the backward
    # pass needs. x: (rows, D).
    x32 = tf.cast(x, tf.float32)
    mean = _row_means(x32)
    centered = x32 - mean
    inv = tf.math.rsqrt(_row_means(centered * centered) + epsilon)
    scale = inv * gamma
    return tf.cast(x32 * scale + (beta - mean * scale), x.dtype), mean, inv


def _layer_norm_backward(upstream, x, mean, inv, gamma):
    import tensorflow as tf

    # With xhat = (x - mean) * inv and g = upstream * gamma (per row of D):
    # dx = inv * (g - mean(g) - xhat * mean(g * xhat)); dgamma = sum(upstream * xhat);
    # dbeta = sum(upstream) (Ba et al. 2016, Section 3.1, differentiated). x: (rows, D).
    dy = tf.cast(upstream, tf.float32)
    xhat = (tf.cast(x, tf.float32) - mean) * inv
    g = dy * gamma
    dx = inv * (g - _row_means(g) - xhat * _row_means(g * xhat))
    return tf.cast(dx, x.dtype), _column_sums_of(dy * xhat), _column_sums_of(dy)


@functools.cache
def _compiled(function):
    import tensorflow as tf

    return tf.function(function, jit_compile=True, reduce_retracing=True)


def gelu_exact(x):
    """Exact GELU `x * Phi(x)` for training, with a hand-written gradient.

    The derivative is `Phi(x) + x * phi(x)` (Phi, phi: the standard normal
    CDF and density). One XLA kernel computes the value, another the
    incoming gradient times the derivative, both in float32 from the saved
    input `x` (the only tensor kept for the backward pass; autodiff of
    `tf.nn.gelu` keeps several of the size of BERT's 4x-wide feed-forward
    activations, the largest of a step), each result rounded once to `x`'s
    dtype. `Phi(x)` is `0.5 + 0.5 erf(x / sqrt(2))`, google-research/bert's
    `gelu`: values are within 1e-6 of `tf.nn.gelu(x, approximate=False)`
    (which uses `erfc`, not vectorized in TensorFlow's CPU kernel). On an
    `(4096, 2048)` float32 input, forward plus backward took 6.0 ms, against
    19.4 ms as TensorFlow ops and 30.5 ms for autodiff of `tf.nn.gelu`
    (Zen 4, 2 threads).

    Args:
        x: float tensor of any shape (float32, bfloat16 or float16).

    Returns:
        Tensor of the shape and dtype of `x`.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def gelu(x):
        def grad(upstream):
            return _compiled(_gelu_backward)(upstream, x)

        return _compiled(_gelu_forward)(x), grad

    return gelu(x)


def layer_norm(layer, x):
    """`layer(x)` in the dtype of `x` for a float32 `keras.layers.LayerNormalization`.

    One XLA kernel forward, computing in float32 (as Keras does) with the
    layer's own float32 `gamma`, `beta` and `epsilon` and keeping each row's
    mean and inverse standard deviation; one XLA kernel backward, the
    closed-form LayerNorm gradient (`_layer_norm_backward`). Inputs are read
    and outputs written in `x`'s dtype, without separate cast kernels; the
    row means and column sums are matrix-vector products (`_row_means`),
    faster than XLA's CPU reductions. On a `(4096, 512)` float32 input,
    forward plus backward took 3.3-4.9 ms against 10-11 ms for Keras' layer
    under autodiff (Zen 4, 2 threads). A layer
    that is not the plain last-axis LayerNorm with scale and center
    (`axis=-1`, `rms_scaling=False`), or another backend: the layer is called.

    Args:
        layer: built `keras.layers.LayerNormalization`.
        x: float tensor `(..., hidden_size)`.

    Returns:
        Tensor of the shape and dtype of `x`.
    """
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    plain = (
        axis in (-1, (-1,), len(x.shape) - 1, (len(x.shape) - 1,))
        and layer.center
        and layer.scale
        and not layer.rms_scaling
        and keras.backend.backend() == "tensorflow"
    )
    if not plain:
        return keras.ops.cast(layer(x), x.dtype)
    import tensorflow as tf

    epsilon = float(layer.epsilon)

    @tf.custom_gradient
    def normalize(rows, gamma, beta):
        y, mean, inv = _compiled(_layer_norm_forward)(rows, gamma, beta, epsilon)

        def grad(upstream):
            return _compiled(_layer_norm_backward)(upstream, rows, mean, inv, gamma)

        return y, grad

    width = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    rows = tf.reshape(x, tf.stack([-1, width])) if len(x.shape) != 2 else x
    y = normalize(rows, tf.convert_to_tensor(layer.gamma.value), tf.convert_to_tensor(layer.beta.value))
    return y if len(x.shape) == 2 else tf.reshape(y, tf.shape(x))


def _matmul_kernel_transposed(upstream, kernel):
    """`upstream @ kernel.T`, on a transposed copy of `kernel` unless it narrows.

    TensorFlow's graph optimizer folds a `Transpose` into the MatMul's
    `transpose_b`; `Snapshot` (a copy) keeps the transposed operand. oneDNN's
    `transpose_b` MatMul for the input gradient of BERT's widening Dense
    (`(B*S, 4D) x (4D, D)`) measured 92-160 GFLOP/s on Zen 4 against 200-212
    for the copy (1 M elements) plus a plain MatMul; for a square kernel
    (`D x D`) 169 against 195. For a narrowing kernel (`(4D, D)`, the
    feed-forward output) `transpose_b` ran as fast as the copy plus MatMul
    (212 against 209 GFLOP/s), so the copy is skipped there.
    """
    import tensorflow as tf

    if kernel.shape[0] is not None and kernel.shape[1] is not None and kernel.shape[0] > kernel.shape[1]:
        return tf.matmul(upstream, kernel, transpose_b=True)
    return tf.matmul(upstream, tf.raw_ops.Snapshot(input=tf.transpose(kernel)))


def _column_sums(upstream):
    """`sum(upstream, axis=0)` of a 2-D float32 tensor as a `(1, rows) x (rows, cols)` MatMul.

    The bias gradient of a Dense. oneDNN's matrix-vector product read the
    `(4096, 2048)` gradient of BERT's feed-forward layer in 0.9 ms against
    1.6 ms for `BiasAddGrad` (Zen 4, 2 threads; equal at width 512).
    """
    import tensorflow as tf

    ones = tf.ones(tf.stack([1, tf.shape(upstream)[0]]), upstream.dtype)
    return tf.matmul(ones, upstream)[0]


def dense(layer, x, scale=None):
    """`layer(x)` (times `scale`) for a built `keras.layers.Dense` on a 2-D `x`, as a train step runs it.

    The same MatMul plus bias add forward (fused by TensorFlow's remapper);
    the backward pass computes the input gradient `dy @ kernel.T` as a plain
    MatMul on a transposed copy of the kernel (see `_matmul_kernel_transposed`),
    the kernel gradient `x.T @ dy` as Keras' autodiff does, and the bias
    gradient as a matrix-vector product (`_column_sums`). On the float32
    `bert_small` step the transposed copy took the matmuls from 1816 to
    1744 ms and all ops from 2360 to 2312 ms (TensorFlow profiler, Zen 4).
    A `scale` multiplies the kernel and bias (`hidden_size**2` elements)
    instead of the output (`tokens * hidden_size`), forward and backward;
    exact when it is a power of two (attention's `1/sqrt(64)`).
    bfloat16 input (oneDNN's transposed bfloat16 MatMul is not slower), a
    Dense with an activation, LoRA, quantization or a non-2-D input, or
    another backend: the layer is called as it is (and its output scaled).

    Args:
        layer: built `keras.layers.Dense`.
        x: float tensor `(tokens, input_dim)` in the layer's compute dtype.
        scale: optional Python float, a factor for the result.

    Returns:
        Tensor `(tokens, units)` in `x`'s dtype.
    """
    plain = (
        keras.backend.backend() == "tensorflow"
        and x.dtype == "float32"
        and len(x.shape) == 2
        and layer.activation is keras.activations.linear
        and not getattr(layer, "lora_enabled", False)
        and not getattr(layer, "quantization_mode", None)
    )
    if not plain:
        y = layer(x)
        return y if scale is None else keras.ops.multiply(y, keras.ops.cast(scale, y.dtype))
    import tensorflow as tf

    kernel = tf.cast(layer.kernel.value, x.dtype)
    bias = tf.cast(layer.bias.value, x.dtype) if layer.use_bias else None
    if scale is not None:
        kernel = kernel * scale
        bias = None if bias is None else bias * scale

    @tf.custom_gradient
    def linear(x, kernel, *bias):
        y = tf.matmul(x, kernel)
        if bias:
            y = tf.nn.bias_add(y, bias[0])

        def grad(upstream):
            grads = (_matmul_kernel_transposed(upstream, kernel), tf.matmul(x, upstream, transpose_a=True))
            return grads + ((_column_sums(upstream),) if bias else ())

        return y, grad

    return linear(x, kernel, *((bias,) if bias is not None else ()))
