"""BERT's optimizer: AdamW with linear warmup and linear decay
(Devlin et al. 2019, Appendix A.2; google-research/bert `optimization.py`)."""

import keras

# Variables that get no weight decay (BERT: LayerNorm and biases).
NO_DECAY_NAMES = ("gamma", "beta", "bias", "output_bias")


@keras.saving.register_keras_serializable(package="kbert")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate`, then linear decay to `end_learning_rate`.

    lr(step) = peak * step / warmup_steps                        for step < warmup_steps
             = end + (peak - end) * (1 - (step - warmup) / (total - warmup))  after,
    clipped at `end_learning_rate` past `total_steps`.

    Args:
        peak_learning_rate: float > 0.
        warmup_steps: int >= 0.
        total_steps: int > warmup_steps.
        end_learning_rate: float >= 0.

    Raises:
        ValueError: inconsistent step counts or rates (values echoed).
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, end_learning_rate=0.0):
        if peak_learning_rate <= 0:
            raise ValueError(f"peak_learning_rate={peak_learning_rate} must be > 0.")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"Need 0 <= warmup_steps < total_steps; got warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}."
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = self.peak_learning_rate * step / max(self.warmup_steps, 1)
        progress = keras.ops.clip(
            (step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        decay = self.end_learning_rate + (
            self.peak_learning_rate - self.end_learning_rate
        ) * (1.0 - progress)
        return keras.ops.where(step < self.warmup_steps, warmup, decay)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "end_learning_rate": self.end_learning_rate,
        }


def create_adamw(
    learning_rate,
    total_steps,
    warmup_steps=None,
    weight_decay=0.01,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
):
    """Returns BERT's `keras.optimizers.AdamW` with a `WarmupLinearDecay` schedule.

    LayerNorm scales/offsets and all biases are excluded from weight decay, as
    in google-research/bert. Gradient clipping is left off: Keras 3 clips
    each replica's gradients before the cross-replica sum, which would make
    results depend on the number of replicas.

    Args:
        learning_rate: float, peak learning rate.
        total_steps: int, number of optimizer steps of the whole run.
        warmup_steps: int, defaults to 10% of `total_steps`.
        weight_decay: float, decoupled weight decay (Loshchilov & Hutter 2019).
        beta_1, beta_2, epsilon: Adam parameters (BERT: 0.9, 0.999, 1e-6).
    """
    if warmup_steps is None:
        warmup_steps = max(1, total_steps // 10)
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(learning_rate, warmup_steps, total_steps),
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer
