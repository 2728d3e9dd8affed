"""Exact GELU and LayerNorm as a train step should run them (TensorFlow backend).

Same values (to within float32 rounding), less time and memory than Keras'
ops under autodiff. For bfloat16/float16 inputs (mixed precision) each is
one XLA-compiled elementwise kernel forward and backward: TensorFlow would
run every elementwise op, and the casts to and from float32 around them, as
its own pass over memory, and emulates bfloat16 `erfc` element by element on
CPUs. Compiling the whole train step instead is slower on CPUs (XLA's
matmuls are not oneDNN's: `benchmarks/train_throughput.py --jit_compile`
measured 16% slower in float32 and 2x slower in mixed_bfloat16 for
`bert_small`), so only these elementwise chains are compiled and the
matmuls stay with TensorFlow. For float32 inputs XLA's kernels measured
slower than TensorFlow's (2% on the `bert_small` step), so there GELU is
TensorFlow ops with a hand-written gradient and LayerNorm is Keras'.
kbert's layers call these in training only: inference, SavedModel and
TFLite graphs are unchanged. XLA compiles each new input shape once (a few
tenths of a second).
"""

import functools

import keras

_SQRT_HALF = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2*pi)


def _gelu_and_derivative(x):
    import tensorflow as tf

    x32 = tf.cast(x, tf.float32)
    cdf = 0.5 + 0.5 * tf.math.erf(x32 * _SQRT_HALF)  # Phi(x), BERT's erf form
    density = tf.exp(-0.5 * tf.square(x32)) * _INV_SQRT_2PI  # phi(x)
    # x * Phi(x) is tf.nn.gelu(approximate=False); d/dx = Phi(x) + x * phi(x).
    return tf.cast(x32 * cdf, x.dtype), tf.cast(cdf + x32 * density, x.dtype)


def _layer_norm(x, gamma, beta, epsilon):
    import tensorflow as tf

    # keras.ops.layer_normalization's float32 expression.
    x32 = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
    inv = tf.math.rsqrt(variance + epsilon) * gamma
    return tf.cast(x32 * inv + (beta - mean * inv), x.dtype)


@functools.cache
def _compiled(function):
    import tensorflow as tf

    return tf.function(function, jit_compile=True, reduce_retracing=True)


def _gelu_float32(x):
    import tensorflow as tf

    @tf.custom_gradient
    def gelu(x):
        # google-research/bert's erf form (tf.nn.gelu uses erfc, a scalar loop in Eigen:
        # 7.5 vs 2.5 ms on 8 M floats, Zen 4); within 2e-7 of tf.nn.gelu.
        y = x * (0.5 + 0.5 * tf.math.erf(x * _SQRT_HALF))

        def grad(upstream):
            cdf = 0.5 + 0.5 * tf.math.erf(x * _SQRT_HALF)
            return upstream * (cdf + x * (tf.exp(-0.5 * tf.square(x)) * _INV_SQRT_2PI))

        return y, grad

    return gelu(x)


def gelu_exact(x):
    """Exact GELU `x * Phi(x)` for training, with a hand-written gradient.

    The derivative is `Phi(x) + x * phi(x)` (Phi, phi: the standard normal
    CDF and density). Autodiff of `tf.nn.gelu` keeps several intermediates of
    the input's size for the backward pass (BERT's 4x-wide feed-forward
    activations, the largest of a step); this keeps one. `Phi(x)` is
    `0.5 + 0.5 erf(x / sqrt(2))` as in google-research/bert's `gelu` (TensorFlow's
    `erf` kernel is vectorized, its `erfc`, used by `tf.nn.gelu`, is not);
    values are within 2e-7 of `tf.nn.gelu(x, approximate=False)`. float32 input:
    TensorFlow ops, keeping `x` (the backward pass recomputes `Phi`). bfloat16/float16 input:
    one XLA kernel computes the value and the derivative in float32 and
    rounds both to the input dtype; the backward pass multiplies the
    incoming gradient by that saved derivative.

    Args:
        x: float tensor of any shape (float32, bfloat16 or float16).

    Returns:
        Tensor of the shape and dtype of `x`.
    """
    import tensorflow as tf

    if x.dtype == tf.float32:
        return _gelu_float32(x)

    @tf.custom_gradient
    def gelu(x):
        y, derivative = _compiled(_gelu_and_derivative)(x)
        return y, lambda upstream: upstream * derivative

    return gelu(x)


def layer_norm(layer, x):
    """`layer(x)` in the dtype of `x` for a float32 `keras.layers.LayerNormalization`.

    For a bfloat16/float16 `x`: one XLA kernel each way, computing in float32
    (as Keras does) with the layer's own float32 `gamma`, `beta` and
    `epsilon`, reading `x` and writing the output without separate cast
    kernels. For a float32 `x`, or a layer that is not the plain last-axis
    LayerNorm with scale and center (`axis=-1`, `rms_scaling=False`), the
    layer is called.

    Args:
        layer: built `keras.layers.LayerNormalization`.
        x: float tensor `(..., hidden_size)`.

    Returns:
        Tensor of the shape and dtype of `x`.
    """
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    plain = (
        x.dtype != "float32"
        and axis in (-1, (-1,), len(x.shape) - 1, (len(x.shape) - 1,))
        and layer.center
        and layer.scale
        and not layer.rms_scaling
        and keras.backend.backend() == "tensorflow"
    )
    if not plain:
        return keras.ops.cast(layer(x), x.dtype)
    return _compiled(_layer_norm)(x, layer.gamma.value, layer.beta.value, float(layer.epsilon))


def _matmul_kernel_transposed(upstream, kernel):
    """`upstream @ kernel.T` as a plain MatMul on a transposed copy of `kernel`.

    TensorFlow's graph optimizer folds a `Transpose` into the MatMul's
    `transpose_b`; `Snapshot` (a copy) keeps the transposed operand. oneDNN's
    `transpose_b` MatMul for the input gradient of BERT's widening Dense
    (`(B*S, 4D) x (4D, D)`) measured 92-160 GFLOP/s on Zen 4 against 200-212
    for the copy (1 M elements) plus a plain MatMul.
    """
    import tensorflow as tf

    return tf.matmul(upstream, tf.raw_ops.Snapshot(input=tf.transpose(kernel)))


def dense(layer, x):
    """`layer(x)` for a built `keras.layers.Dense` on a 2-D float32 `x`, as a train step runs it.

    The same MatMul plus bias add forward (fused by TensorFlow's remapper);
    the backward pass computes the input gradient `dy @ kernel.T` as a plain
    MatMul on a transposed copy of the kernel (see `_matmul_kernel_transposed`),
    the kernel gradient `x.T @ dy` and the bias gradient as Keras' autodiff
    does. On the float32 `bert_small` step this took the matmuls from 1816 to
    1744 ms and all ops from 2360 to 2312 ms (TensorFlow profiler, Zen 4).
    bfloat16 input (oneDNN's transposed bfloat16 MatMul is not slower), a
    Dense with an activation, LoRA, quantization or a non-2-D input, or
    another backend: the layer is called as it is.

    Args:
        layer: built `keras.layers.Dense`.
        x: float tensor `(tokens, input_dim)` in the layer's compute dtype.

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
        return layer(x)
    import tensorflow as tf

    kernel = tf.cast(layer.kernel.value, x.dtype)
    bias = tf.cast(layer.bias.value, x.dtype) if layer.use_bias else None

    @tf.custom_gradient
    def linear(x, kernel, *bias):
        y = tf.matmul(x, kernel)
        if bias:
            y = tf.nn.bias_add(y, bias[0])

        def grad(upstream):
            grads = (_matmul_kernel_transposed(upstream, kernel), tf.matmul(x, upstream, transpose_a=True))
            return grads + ((tf.raw_ops.BiasAddGrad(out_backprop=upstream),) if bias else ())

        return y, grad

    return linear(x, kernel, *((bias,) if bias is not None else ()))
