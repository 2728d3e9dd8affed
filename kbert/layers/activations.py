"""Activation lookup shared by kbert layers.

BERT's original release (google-research/bert `modeling.gelu`, later corrected to
the exact form) and HuggingFace's `hidden_act` strings name the feed-forward
activation. This module maps those names to Keras activations so that a layer's
config stores the *name* (a plain string that round-trips through `get_config`).
"""

import keras

_ALIASES = {
    # Exact GELU, x * Phi(x) with Phi the standard normal CDF (erf form).
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "gelu_exact": lambda x: keras.activations.gelu(x, approximate=False),
    # tanh approximation of GELU (Hendrycks & Gimpel 2016, eq. 2); HF names it
    # "gelu_new", "gelu_pytorch_tanh" or "gelu_fast".
    "gelu_approximate": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu_new": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu_fast": lambda x: keras.activations.gelu(x, approximate=True),
}


def get_activation(name):
    """Returns the activation function for `name`.

    Args:
        name: str. One of "gelu" (exact erf GELU, BERT's default),
            "gelu_approximate" (tanh form; aliases "gelu_new",
            "gelu_pytorch_tanh", "gelu_fast") or any name that
            `keras.activations.get` accepts ("relu", "tanh", ...).

    Returns:
        A callable mapping a tensor to a tensor of the same shape and dtype.

    Raises:
        ValueError: if `name` is not a string or names no known activation.
    """
    if not isinstance(name, str):
        raise ValueError(  # noqa: TRY004 (the documented error of a wrong argument)
            f"`activation` must be a string naming an activation so that it "
            f"serializes; received {name!r} of type {type(name).__name__}."
        )
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        return keras.activations.get(name)
    except ValueError as error:
        raise ValueError(
            f"Unknown activation {name!r}. Use one of {sorted(_ALIASES)} or a "
            f"name known to `keras.activations.get`."
        ) from error


_SQRT_HALF = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2*pi)


def _gelu_exact_lean(x):
    """Exact GELU whose backward pass keeps only `x` (TensorFlow; see `training_activation`)."""
    import tensorflow as tf

    @tf.custom_gradient
    def gelu(x):
        x32 = tf.cast(x, tf.float32)
        # tf.nn.gelu(approximate=False)'s own expression, so float32 results are identical.
        y = 0.5 * x32 * tf.math.erfc(-x32 * _SQRT_HALF)

        def grad(upstream):
            x32 = tf.cast(x, tf.float32)
            # d/dx x*Phi(x) = Phi(x) + x*phi(x), Phi/phi the standard normal CDF/density.
            cdf = 0.5 * tf.math.erfc(-x32 * _SQRT_HALF)
            density = tf.exp(-0.5 * tf.square(x32)) * _INV_SQRT_2PI
            return tf.cast(tf.cast(upstream, tf.float32) * (cdf + x32 * density), x.dtype)

        return tf.cast(y, x.dtype), grad

    return gelu(x)


def training_activation(name):
    """The activation `name` as a train step should compute it: same values, less memory.

    For exact GELU ("gelu", "gelu_exact") on the TensorFlow backend this is a
    function with a hand-written gradient, `Phi(x) + x * phi(x)`, that keeps
    only its input for the backward pass (autodiff of `tf.nn.gelu` keeps
    several intermediate tensors of the input's size, and BERT's 4x-wide
    feed-forward activations are the largest of a step), and that computes in float32
    whatever the input dtype (a bfloat16 `erfc` is emulated element by
    element on CPUs and several times slower), returning the input dtype.
    Forward values equal `get_activation(name)`'s in float32 (same
    expression) and are rounded once to a bfloat16/float16 input's dtype.
    Every other name returns `get_activation(name)`.

    Args:
        name: str, as for `get_activation`.

    Returns:
        A callable mapping a tensor to a tensor of the same shape and dtype.

    Raises:
        ValueError: as `get_activation`.
    """
    activation = get_activation(name)
    if name in ("gelu", "gelu_exact") and keras.backend.backend() == "tensorflow":
        return _gelu_exact_lean
    return activation
