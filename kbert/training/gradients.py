"""Updates that depend only on the global batch: sum, then clip once, then apply.

Three things in Keras 3.15's TensorFlow optimizer make an update depend on how
the global batch is split (checked in `keras/src/optimizers/base_optimizer.py`
and `keras/src/backend/tensorflow/optimizer.py`, and by tests/test_optimization.py):

- `BaseOptimizer._backend_apply_gradients` clips *before*
  `TFOptimizer._backend_update_step` sums the gradients over replicas
  (`_all_reduce_sum_gradients`): with `global_clipnorm` each replica clips
  its own share, so N replicas update differently from one.
- An `IndexedSlices` gradient (of a `tf.gather`: segment ids, any untied
  embedding) with a repeated index is squared row by row: `global_norm`
  and Adam's second moment (`ops.square`) add the squares of the rows
  instead of squaring their sum.
- With `gradient_accumulation_steps` the learning-rate schedule is called
  with the micro-batch counter (documented: schedules "look at real
  iterations"), and the accumulate-or-apply `ops.cond` runs in the replica
  context, which `MirroredStrategy` refuses (`merge_call` inside a cond).

`GlobalBatchMixin` fixes all of them for kbert's optimizers
(`kbert.training.create_optimizer`).
"""

import keras
import tensorflow as tf

# The private Keras hooks the mixin overrides; checked when an optimizer is made.
KERAS_HOOKS = (
    "_clip_gradients",
    "_all_reduce_sum_gradients",
    "_backend_apply_gradients",
    "_backend_increment_gradient_accumulators",
    "_distributed_tf_update_step",
    "_get_current_learning_rate",
)


def _square_sum(gradient, dtype):
    if isinstance(gradient, tf.IndexedSlices):
        # The dense gradient sums the rows of repeated indices; their squares do not add up to it.
        gradient = tf.convert_to_tensor(gradient)
    return tf.reduce_sum(tf.square(tf.cast(gradient, dtype)))


def global_norm(gradients):
    """The L2 norm of all `gradients` together, as the dense gradients would have it.

    Like `tf.linalg.global_norm`, except that an `IndexedSlices` gradient
    counts as its dense value (rows of a repeated index summed before
    squaring), which is the gradient the variable receives.

    Args:
        gradients: list of float tensors or `tf.IndexedSlices` (None skipped).

    Returns:
        scalar, float64 if any gradient is float64, else float32.
    """
    present = [g for g in gradients if g is not None]
    dtype = tf.float64 if any(g.dtype == tf.float64 for g in present) else tf.float32
    return tf.sqrt(tf.add_n([_square_sum(g, dtype) for g in present]))


def clip_by_global_norm(gradients, clip_norm):
    """Scales `gradients` by `clip_norm / max(global_norm, clip_norm)` (BERT: clip_norm 1.0).

    Matches `tf.clip_by_global_norm` (google-research/bert `optimization.py`)
    with the norm of `global_norm`; a non-finite norm makes every gradient
    NaN, as there, so a diverged step is visible rather than silently scaled.

    Args:
        gradients: list of float tensors or `tf.IndexedSlices` (None kept).
        clip_norm: float > 0.

    Returns:
        (clipped list, the global norm before clipping).
    """
    norm = global_norm(gradients)
    clip = tf.cast(clip_norm, norm.dtype)
    scale = clip / tf.maximum(norm, clip) + (norm - norm)  # NaN when the norm is not finite

    def scaled(g):
        if g is None:
            return None
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values * tf.cast(scale, g.dtype), g.indices, g.dense_shape)
        return g * tf.cast(scale, g.dtype)

    return [scaled(g) for g in gradients], norm


class GlobalBatchMixin:
    """Makes a Keras 3 optimizer's update depend only on the global batch.

    Mix in before a `keras.optimizers` class (`class AdamW(GlobalBatchMixin,
    keras.optimizers.AdamW)`). With the TensorFlow backend, on the default
    or any `tf.distribute` strategy, each update is:

    1. the gradients summed over replicas (Keras' all-reduce; `IndexedSlices`
       stay sparse for it), then made dense (repeated rows summed);
    2. under `gradient_accumulation_steps=K`, added to an accumulator (the
       same on every replica, so a checkpoint holds the whole sum); every
       K-th micro-batch, the mean accumulated gradient is applied and the
       accumulator zeroed;
    3. clipped to `global_clipnorm` by the norm of all gradients together
       (`clip_by_global_norm`);
    4. weight decay and the optimizer's own update, at the learning rate of
       `schedule(optimizer.iterations)`, where `optimizer.iterations` counts
       *applied updates* (micro-batches // K), so update `n` uses
       `schedule(n)` as a run with K-times larger batches does.

    So 1 or N replicas, and 1 batch or K micro-batches of the same examples,
    make the same update (up to float rounding), provided the loss of a
    micro-batch is its share of the big batch's (see `create_optimizer`).
    `clipnorm`, `clipvalue` (per variable, per replica in Keras) and
    `use_ema` with accumulation are refused. The names excluded from weight
    decay are an argument kept in `get_config`, so a reloaded optimizer still
    exempts them (Keras' `exclude_from_weight_decay` is not saved). Relies on
    the private Keras hooks `KERAS_HOOKS` (checked here; written against
    Keras 3.15).

    Args:
        no_decay_names: sequence of substrings; variables whose name contains
            one get no weight decay.
        **kwargs: the Keras optimizer's arguments.

    Raises:
        ValueError: `clipnorm` or `clipvalue` given, `global_clipnorm` <= 0,
            or `use_ema` with `gradient_accumulation_steps`.
        RuntimeError: not the TensorFlow backend, or this Keras lacks one of
            `KERAS_HOOKS`.
    """

    def __init__(self, *args, no_decay_names=(), **kwargs):
        missing = [hook for hook in KERAS_HOOKS if not hasattr(self, hook)]
        if missing or keras.config.backend() != "tensorflow":
            raise RuntimeError(
                f"kbert's optimizers need Keras 3's TensorFlow optimizer hooks {missing or KERAS_HOOKS} "
                f"(written against Keras 3.15); found keras {keras.__version__} with backend "
                f"{keras.config.backend()!r}."
            )
        for name in ("clipnorm", "clipvalue"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{name}={kwargs[name]} is applied per variable on each replica; use "
                    "global_clipnorm (clipped once, after the cross-replica sum)."
                )
        if kwargs.get("use_ema") and kwargs.get("gradient_accumulation_steps"):
            raise ValueError("use_ema with gradient_accumulation_steps is not supported.")
        clip = kwargs.get("global_clipnorm")
        if clip is not None and not clip > 0:
            raise ValueError(f"global_clipnorm={clip} must be > 0 (or None for no clipping).")
        super().__init__(*args, **kwargs)
        self.no_decay_names = tuple(no_decay_names)
        if self.no_decay_names:
            self.exclude_from_weight_decay(var_names=list(self.no_decay_names))

    def _clip_gradients(self, grads):
        # Keras calls this before the all-reduce; clipping happens after it instead.
        return grads

    def _sum_over_replicas(self, grads_and_vars):
        """All-reduces (Keras' own sum) and densifies `IndexedSlices` (see the class docstring)."""
        grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
        return [
            (tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g, v)
            for g, v in grads_and_vars
        ]

    def _clip_global_norm(self, grads):
        if not self.global_clipnorm:
            return list(grads)
        return clip_by_global_norm(list(grads), self.global_clipnorm)[0]

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Keras' `_backend_update_step` calls this first: sum, then clip once.
        grads, variables = zip(*self._sum_over_replicas(grads_and_vars))
        return list(zip(self._clip_global_norm(grads), variables))

    def _backend_apply_gradients(self, grads, trainable_variables):
        steps = self.gradient_accumulation_steps
        if not steps:
            return super()._backend_apply_gradients(grads, trainable_variables)
        # Keras 3.15 accumulates each replica's own gradient and branches with `ops.cond` in
        # the replica context, which MirroredStrategy refuses (`merge_call` inside a cond).
        # Here the micro-batch gradient is summed over replicas first (so every replica
        # holds the same accumulator, and a checkpoint holds the whole sum); where updates
        # go through `merge_call` the branch is taken in the cross-replica context, as
        # Keras' LossScaleOptimizer does.
        grads, _ = zip(*self._sum_over_replicas(list(zip(grads, trainable_variables))))
        accumulators = [
            self._accumulated_gradients[self._get_variable_index(v)] for v in trainable_variables
        ]
        self._backend_increment_gradient_accumulators(list(grads), accumulators)
        is_update_step = (self._iterations + 1) % steps == 0

        def apply_or_not():
            keras.ops.cond(
                is_update_step,
                lambda: self._apply_accumulated(trainable_variables, accumulators),
                lambda: None,
            )

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            apply_or_not()  # the default strategy, TPU, multi-worker: updates need no merge_call
            return

        def branch(distribution):
            def apply():
                distribution.extended.call_for_each_replica(
                    self._apply_accumulated, args=(trainable_variables, accumulators)
                )

            keras.ops.cond(is_update_step, apply, lambda: None)

        tf.distribute.get_replica_context().merge_call(branch)

    def _apply_accumulated(self, trainable_variables, accumulators):
        """Applies the mean accumulated gradient (clipped) and zeroes the accumulators."""
        steps = self.gradient_accumulation_steps
        grads = self._clip_global_norm([a.value / steps for a in accumulators])
        self._apply_weight_decay(trainable_variables)
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        strategy = self._distribution_strategy
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, strategy, list(zip(grads, variables)),
            self.learning_rate,
        )

        def reset(distribution, values):
            for value in values:
                distribution.extended.update(
                    value, lambda a: a.assign(tf.zeros_like(a)), group=False
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            reset, strategy, [a.value for a in accumulators]
        )

    def _get_current_learning_rate(self):
        if self.gradient_accumulation_steps and isinstance(
            self._learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def get_config(self):
        return {**super().get_config(), "no_decay_names": list(self.no_decay_names)}


def unwrap(optimizer):
    """The optimizer that updates the weights: `inner_optimizer` of a `LossScaleOptimizer`."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def accumulation_pending(optimizer):
    """True while micro-batch gradients are accumulated but not yet applied.

    `optimizer.iterations` then repeats for K micro-batches; a checkpoint
    written mid-accumulation holds a partial sum that is right only if the
    data also resumes at that micro-batch, so checkpoint callbacks should
    save only when this is False.

    Args:
        optimizer: a Keras optimizer, or a `LossScaleOptimizer` around one.

    Returns:
        bool (False without `gradient_accumulation_steps`).
    """
    inner = unwrap(optimizer)
    steps = getattr(inner, "gradient_accumulation_steps", None)  # None: not a Keras optimizer
    return bool(steps) and int(inner._iterations.numpy()) % steps != 0


@keras.saving.register_keras_serializable(package="kbert")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """`keras.optimizers.LossScaleOptimizer` that skips a step when *any* replica overflowed.

    Keras 3.15 (`loss_scale_optimizer.py`, `_tf_apply`) checks each replica's
    own gradients for inf/NaN and then takes the first replica's answer
    ("grads is all-reduced", which in Keras 3 it is not yet): when only
    another replica overflows, the step is applied and the weights become
    NaN. Here the finite flag is reduced over replicas (one scalar
    all-reduce), so all replicas skip together and the scale halves.
    Arguments and behaviour are otherwise Keras': the loss is multiplied by
    `dynamic_scale`, the gradients divided by it before the inner optimizer
    sees them (so its clipping and accumulation work on the true gradient),
    and the scale doubles after `dynamic_growth_steps` finite steps.

    Args:
        inner_optimizer: the optimizer that updates the weights.
        initial_scale: float, starting loss scale (Keras: 2**15).
        dynamic_growth_steps: int, finite steps between doublings.
    """

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = tf.cast(tf.logical_not(finite), tf.float32)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, overflowed) == 0
