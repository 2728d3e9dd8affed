"""Dropout on 16-bit ThreeFry random integers: about 60% of `keras.layers.Dropout`'s time on a CPU."""

import functools

import keras

# Keep-decisions are made on 16-bit uniform integers: P(drop) = round(rate * 2**16) / 2**16.
_LEVELS = 1 << 16


@functools.cache
def _threefry_bits():
    """An XLA-compiled `(shape, seed) -> uint32 tensor` of ThreeFry-2x32 random bits."""
    import tensorflow as tf

    def bits(shape, seed):
        return tf.random.stateless_uniform(
            shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="threefry"
        )

    return tf.function(bits, jit_compile=True, reduce_retracing=True)


@keras.saving.register_keras_serializable(package="kbert")
class FastDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose random numbers cost less on the TensorFlow backend.

    Same contract as `keras.layers.Dropout` (Srivastava et al. 2014): in
    training each element is zeroed with probability `rate` and the others are
    scaled by `1 / (1 - rate)`; in inference it is the identity.

    How: Keras draws one 32-bit float per element from TensorFlow's Philox
    kernel, which is not vectorized on CPUs and was the most expensive part
    of BERT's many dropouts (35.6M elements per `bert_small` step). Here an
    XLA-compiled kernel draws 32-bit integers with XLA's ThreeFry-2x32
    generator (Salmon et al. 2011, "Parallel random numbers: as easy as
    1, 2, 3"; JAX's default), one per two elements; each is split into two
    16-bit uniform integers and an element is kept when its integer is
    `>= round(rate * 65536)`: elements are dropped independently, with
    probability `rate` to within 2**-17 (0.1 becomes 6554/65536 = 0.100006).
    The scaled mask `keep / (1 - rate)` is made once, in the input's dtype,
    and multiplies the input and, in the backward pass, the gradient
    (without the select that is emulated element by element for bfloat16). Forward on a
    `(32, 8, 128, 128)` float32 input (Zen 4, 2 threads): 5.2 ms against
    8.0 ms with TensorFlow's Philox bits (4.2M uint32: ThreeFry in XLA
    3.4 ms, Philox 10.0 ms). The comparison and scaling stay TensorFlow
    ops: as one XLA kernel they were slower (XLA's CPU loops use one thread).

    Masks come from the layer's `seed_generator` (a new seed per call), so
    they are reproducible and resume with a checkpointed seed state like
    Keras' own; they are not the masks `keras.layers.Dropout` draws from the
    same seed. With a `noise_shape`, an odd or unknown last dimension, a rate
    below 2**-17 or above 1 - 2**-17, or on another backend, it is
    `keras.layers.Dropout`. XLA compiles each new input shape once.

    Args:
        rate: float in [0, 1], the fraction of elements to drop.
        **kwargs: `keras.layers.Dropout` arguments (`noise_shape`, `seed`,
            `name`, `dtype`).

    Call arguments:
        inputs: float tensor of any shape `(..., d)`.
        training: bool, drop only when True.

    Returns:
        A tensor of the shape and dtype of `inputs`.

    Raises:
        ValueError: `rate` outside [0, 1] (from `keras.layers.Dropout`).
    """

    def call(self, inputs, training=False):
        last = inputs.shape[-1]
        threshold = round(self.rate * _LEVELS)
        if (
            not training
            or not 0 < threshold < _LEVELS
            or self.noise_shape is not None
            or keras.backend.backend() != "tensorflow"
            or last is None
            or last % 2
        ):
            return super().call(inputs, training=training)
        import tensorflow as tf

        shape = tf.shape(inputs)
        seed = tf.cast(self.seed_generator.next(), "int32")
        # [..., d/2] uint32 -> [..., d/2, 2] uint16 -> [..., d]
        bits = _threefry_bits()(tf.concat([shape[:-1], [last // 2]], 0), seed)
        bits = tf.reshape(tf.bitcast(bits, tf.uint16), shape)
        keep = bits >= tf.constant(threshold, tf.uint16)
        return _apply_mask(inputs, keep, 1.0 / (1.0 - self.rate))


def _apply_mask(inputs, keep, scale):
    """`inputs * keep * scale`; the backward pass multiplies by the same scaled mask."""
    import tensorflow as tf

    mask = tf.cast(keep, inputs.dtype) * tf.cast(scale, inputs.dtype)

    @tf.custom_gradient
    def apply(x):
        return x * mask, lambda upstream: upstream * tf.cast(mask, upstream.dtype)

    return apply(inputs)
