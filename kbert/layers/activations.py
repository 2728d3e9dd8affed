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


def training_activation(name):
    """The activation `name` as a train step should compute it: same values, less time and memory.

    For exact GELU ("gelu", "gelu_exact") on the TensorFlow backend this is
    `kbert.layers.training_ops.gelu_exact`: a hand-written gradient that
    keeps one tensor for the backward pass, computed in float32 (by one XLA
    kernel for bfloat16/float16 inputs). Every other name returns
    `get_activation(name)`.

    Args:
        name: str, as for `get_activation`.

    Returns:
        A callable mapping a tensor to a tensor of the same shape and dtype.

    Raises:
        ValueError: as `get_activation`.
    """
    activation = get_activation(name)
    if name in ("gelu", "gelu_exact") and keras.backend.backend() == "tensorflow":
        from kbert.layers.training_ops import gelu_exact

        return gelu_exact
    return activation
