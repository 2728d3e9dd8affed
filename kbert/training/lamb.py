"""LAMB as published (You et al. 2020, "Large Batch Optimization for Deep Learning:
Training BERT in 76 minutes", Algorithm 2), for Keras 3 on TensorFlow."""

import keras
from keras import ops

from kbert.training.gradients import GlobalBatchMixin


@keras.saving.register_keras_serializable(package="kbert")
class Lamb(GlobalBatchMixin, keras.optimizers.Lamb):
    """LAMB: Adam's direction plus weight decay, scaled per variable by a trust ratio.

    For each variable `w` with gradient `g` at update `t` (1-based):

        m = beta_1 m + (1 - beta_1) g          v = beta_2 v + (1 - beta_2) g^2
        r = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        u = r + weight_decay * w               (no decay for `no_decay_names`)
        ratio = ||w|| / ||u||  (1 if either norm is 0, or for
                                `no_layer_adaptation_names`)
        w = w - learning_rate * ratio * u

    This is Algorithm 2 of You et al. 2020 with phi = identity, as in
    Model Garden's `official/modeling/optimization/lamb.py` and NVIDIA's
    BERT recipe (which also exempt LayerNorm and biases from decay and trust
    ratio). `keras.optimizers.Lamb` (Keras 3.15) differs in two ways: it
    applies weight decay outside the trust ratio (`w -= lr * wd * w` before
    the step, not in `u`), and it scales LayerNorm and bias updates by a
    trust ratio too; this class keeps its variables and arguments and
    replaces the update. Clipping and accumulation: see `GlobalBatchMixin`.

    Args:
        learning_rate, beta_1, beta_2, epsilon, weight_decay, global_clipnorm,
            gradient_accumulation_steps, ...: as `keras.optimizers.Lamb`
            (`epsilon` defaults to LAMB's 1e-6, `weight_decay` to 0).
        no_decay_names: substrings of variable names without weight decay.
        no_layer_adaptation_names: substrings of variable names without a
            trust ratio (ratio 1); defaults to `no_decay_names`.

    Raises:
        ValueError: `weight_decay` < 0, and see `GlobalBatchMixin`.
    """

    def __init__(self, learning_rate=0.001, epsilon=1e-6, weight_decay=0.0,
                 no_layer_adaptation_names=None, **kwargs):
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
        super().__init__(learning_rate=learning_rate, epsilon=epsilon,
                         weight_decay=weight_decay, **kwargs)
        if no_layer_adaptation_names is None:
            no_layer_adaptation_names = self.no_decay_names
        self.no_layer_adaptation_names = tuple(no_layer_adaptation_names)

    def _apply_weight_decay(self, variables):
        # The decay is part of the update `u` (and so of its trust ratio).
        return

    def _uses_layer_adaptation(self, variable):
        return not any(name in variable.name for name in self.no_layer_adaptation_names)

    def update_step(self, gradient, variable, learning_rate):
        """Applies one LAMB update to `variable` (see the class docstring)."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        m_hat = m / (1 - ops.power(ops.cast(self.beta_1, dtype), step))
        v_hat = v / (1 - ops.power(ops.cast(self.beta_2, dtype), step))
        update = m_hat / (ops.sqrt(v_hat) + ops.cast(self.epsilon, dtype))
        if self.weight_decay and self._use_weight_decay(variable):
            update = update + ops.cast(self.weight_decay, dtype) * variable
        if self._uses_layer_adaptation(variable):
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            ratio = ops.where((w_norm > 0) & (u_norm > 0), w_norm / ops.maximum(u_norm, 1e-30), 1.0)
            update = ops.cast(ratio, dtype) * update
        self.assign_sub(variable, lr * update)

    def get_config(self):
        return {**super().get_config(),
                "no_layer_adaptation_names": list(self.no_layer_adaptation_names)}
