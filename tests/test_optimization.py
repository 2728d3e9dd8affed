"""Optimizers: global-norm clipping after the all-reduce, accumulation, LAMB, loss scaling.

The references are NumPy transcriptions of the published updates (BERT's
`tf.clip_by_global_norm`, Keras' Adam, You et al. 2020 Algorithm 2 for LAMB),
fed with gradients given per replica; MirroredStrategy runs on the two logical
CPUs that tests/conftest.py sets up.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.checkpoints import read_model
from kbert.data import split_features_for_fit
from kbert.models import BertEncoder, BertPretrainer
from kbert.training import (
    CheckpointCallback,
    Lamb,
    LossScaleOptimizer,
    NonFiniteGuard,
    NonFiniteLossError,
    TrainingCheckpoint,
    check_static_shapes,
    compile_pretrainer,
    create_optimizer,
    init_from_checkpoint,
)
from kbert.training.gradients import global_norm
from kbert.training.optimization import SGD, AdamW, WarmupLinearDecay
from tests.numpy_bert import randomize

VOCAB, WIDTH = 5, 4
NO_DECAY = ("gamma", "beta", "bias")


def _variables():
    """Initial values: a kernel, a bias and an embedding table (float64 for the references)."""
    rng = np.random.default_rng(3)
    return {
        "kernel": rng.normal(0, 0.5, (3, WIDTH)),
        "bias": rng.normal(0, 0.5, (WIDTH,)),
        "embeddings": rng.normal(0, 0.5, (VOCAB, WIDTH)),
    }


def _replica_gradients(seed, replicas=2):
    """Per replica: dense kernel/bias gradients, embedding rows for ids with a repeat."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicas):
        out.append({
            "kernel": rng.normal(0, 1.0, (3, WIDTH)),
            "bias": rng.normal(0, 1.0, (WIDTH,)),
            "ids": np.array([1, 3, 1], "int32"),  # id 1 twice: its rows add up
            "rows": rng.normal(0, 1.0, (3, WIDTH)),
        })
    return out


def _dense(replica):
    table = np.zeros((VOCAB, WIDTH))
    np.add.at(table, replica["ids"], replica["rows"])
    return {"kernel": replica["kernel"], "bias": replica["bias"], "embeddings": table}


def _global(replicas):
    """The global batch's gradient: Keras sums the replicas' (scaled) gradients."""
    dense = [_dense(r) for r in replicas]
    return {k: sum(d[k] for d in dense) for k in dense[0]}


def _clip(grads, clip_norm):
    norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
    return {k: g * min(1.0, clip_norm / norm) for k, g in grads.items()}, norm


def _numpy_sgd(weights, grads, lr, wd):
    return {k: w - lr * wd * w * (k != "bias") - lr * grads[k] for k, w in weights.items()}


def _numpy_adamw(weights, grads, lr, wd, eps, b1=0.9, b2=0.999):
    """One Keras AdamW step from zero moments (keras/src/optimizers/adam.py, first step)."""
    out = {}
    for k, w in weights.items():
        m, v = (1 - b1) * grads[k], (1 - b2) * grads[k] ** 2
        alpha = lr * np.sqrt(1 - b2) / (1 - b1)
        out[k] = w - lr * wd * w * (k != "bias") - m * alpha / (np.sqrt(v) + eps)
    return out


def _numpy_lamb(weights, grads, lr, wd, eps, b1=0.9, b2=0.999):
    """One step of LAMB, You et al. 2020 Algorithm 2 (phi = identity), from zero moments;
    no decay and no trust ratio for the bias (Model Garden's exclusions)."""
    out = {}
    for k, w in weights.items():
        m, v = (1 - b1) * grads[k], (1 - b2) * grads[k] ** 2
        r = (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + eps)
        if k == "bias":
            out[k] = w - lr * r
            continue
        u = r + wd * w
        out[k] = w - lr * np.linalg.norm(w) / np.linalg.norm(u) * u
    return out


def _run_steps(strategy, optimizer, weights, micro_batches):
    """Applies each micro-batch's per-replica gradients with `optimizer.apply` in
    `strategy.run` (a tf.function, as `fit` does); returns the final weights."""
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        variables = {k: keras.Variable(v.astype("float32"), name=k) for k, v in weights.items()}
        order = list(variables.values())
        optimizer.build(order)

    def piece(values):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(values[ctx.replica_id_in_sync_group])
        )

    @tf.function
    def step(kernel, bias, ids, rows):
        def replica_fn(kernel, bias, ids, rows):
            table = tf.IndexedSlices(rows, ids, tf.constant([VOCAB, WIDTH], tf.int64))
            optimizer.apply([kernel, bias, table], order)

        strategy.run(replica_fn, args=(kernel, bias, ids, rows))

    for replicas_grads in micro_batches:
        if replicas == 1:  # one replica sees the global batch: its ids and rows concatenated
            replicas_grads = [{
                "kernel": sum(r["kernel"] for r in replicas_grads),
                "bias": sum(r["bias"] for r in replicas_grads),
                "ids": np.concatenate([r["ids"] for r in replicas_grads]),
                "rows": np.concatenate([r["rows"] for r in replicas_grads]),
            }]
        step(*[piece([r[k].astype("float32") if k != "ids" else r[k] for r in replicas_grads])
                for k in ("kernel", "bias", "ids", "rows")])
    return {k: v.numpy() for k, v in variables.items()}, optimizer


def _assert_close(actual, expected, atol):
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], atol=atol, rtol=0, err_msg=k)


def _max_difference(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in b)


MIRRORED = None


def _mirrored():
    """MirroredStrategy over the two logical CPUs, reducing on one device: two strategies
    that use CPU collectives in one process (other test files make theirs) collide on
    collective instance keys ("Shape mismatch in the collective instance 100")."""
    global MIRRORED
    if MIRRORED is None:
        MIRRORED = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return MIRRORED


def test_global_norm_counts_repeated_rows_of_indexed_slices_once_summed():
    rows = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    slices = tf.IndexedSlices(tf.constant(rows), tf.constant([0, 0]), tf.constant([3, 2]))
    # The dense gradient is one row [4, 6]; tf.linalg.global_norm squares the two rows instead.
    assert float(global_norm([slices])) == pytest.approx(np.sqrt(4**2 + 6**2))
    assert float(tf.linalg.global_norm([slices])) == pytest.approx(np.sqrt(30.0))


def test_clipping_happens_once_after_the_all_reduce():
    weights, replicas = _variables(), _replica_gradients(0)
    grads, norm = _clip(_global(replicas), clip_norm=1.0)
    assert norm > 3.0  # clipping is active
    expected = _numpy_sgd(weights, grads, lr=0.5, wd=0.1)
    make = lambda: SGD(learning_rate=0.5, weight_decay=0.1, global_clipnorm=1.0,
                       no_decay_names=NO_DECAY)
    one, _ = _run_steps(tf.distribute.get_strategy(), make(), weights, [replicas])
    with _mirrored().scope():
        optimizer = make()
    two, _ = _run_steps(_mirrored(), optimizer, weights, [replicas])
    _assert_close(one, expected, 1e-6)
    _assert_close(two, expected, 1e-6)
    # Keras' own global_clipnorm clips each replica's share before the sum: another update.
    with _mirrored().scope():
        stock = keras.optimizers.SGD(0.5, weight_decay=0.1, global_clipnorm=1.0)
        stock.exclude_from_weight_decay(var_names=list(NO_DECAY))
    keras_two, _ = _run_steps(_mirrored(), stock, weights, [replicas])
    assert _max_difference(keras_two, expected) > 1e-2


def test_adamw_second_moment_sums_repeated_ids_first():
    # Keras' Adam squares IndexedSlices values row by row, so a repeated id's second moment
    # is the sum of squares instead of the square of the sum; kbert densifies after the sum.
    weights, replicas = _variables(), _replica_gradients(1)
    expected = _numpy_adamw(weights, _global(replicas), lr=0.01, wd=0.1, eps=1e-6)
    with _mirrored().scope():
        optimizer = AdamW(learning_rate=0.01, weight_decay=0.1, epsilon=1e-6,
                          no_decay_names=NO_DECAY)
    two, _ = _run_steps(_mirrored(), optimizer, weights, [replicas])
    _assert_close(two, expected, 1e-6)
    stock = keras.optimizers.AdamW(0.01, weight_decay=0.1, epsilon=1e-6)
    stock.exclude_from_weight_decay(var_names=list(NO_DECAY))
    keras_one, _ = _run_steps(tf.distribute.get_strategy(), stock, weights, [replicas])
    assert np.abs(keras_one["embeddings"][1] - expected["embeddings"][1]).max() > 1e-3


def _numpy_adamw_steps(weights, steps, learning_rates, wd, eps, b1=0.9, b2=0.999):
    """Keras AdamW over several steps (keras/src/optimizers/adam.py and the TensorFlow
    backend's decoupled decay `w -= w * wd * lr`, applied before the Adam step)."""
    w = dict(weights)
    m = {k: np.zeros_like(x) for k, x in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for t, (grads, lr) in enumerate(zip(steps, learning_rates), start=1):
        for k in w:
            w[k] = w[k] - w[k] * wd * lr * (k != "bias")
            m[k] = m[k] + (grads[k] - m[k]) * (1 - b1)
            v[k] = v[k] + (grads[k] ** 2 - v[k]) * (1 - b2)
            alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            w[k] = w[k] - m[k] * alpha / (np.sqrt(v[k]) + eps)
    return w


@pytest.mark.parametrize("xla_decay", [False, True])
@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_adamw_matches_keras_adam_over_steps(replicas, xla_decay, monkeypatch):
    # kbert's AdamW runs the Adam step as ResourceApplyAdam; moments and bias correction
    # must carry over steps as Keras' update_step does, on one device and under Mirrored.
    # The decay of large variables is an XLA kernel: here lowered to every size.
    from kbert.training import optimization

    if xla_decay:
        monkeypatch.setattr(optimization, "_XLA_DECAY_SIZE", 1)
    weights = _variables()
    steps = [_replica_gradients(seed) for seed in (4, 5, 6)]
    schedule = WarmupLinearDecay(0.05, warmup_steps=1, total_steps=4)
    lrs = [float(schedule(step)) for step in range(3)]
    expected = _numpy_adamw_steps(weights, [_global(r) for r in steps], lrs, wd=0.1, eps=1e-6)
    strategy = _mirrored() if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = AdamW(learning_rate=schedule, weight_decay=0.1, epsilon=1e-6,
                          no_decay_names=NO_DECAY)
    actual, optimizer = _run_steps(strategy, optimizer, weights, steps)
    assert int(optimizer.iterations.numpy()) == 3
    _assert_close(actual, expected, 2e-6)
    assert _max_difference(weights, expected) > 0.05  # the updates are not negligible


def test_lamb_matches_algorithm_2():
    weights, replicas = _variables(), _replica_gradients(2)
    grads, _ = _clip(_global(replicas), clip_norm=1.0)
    expected = _numpy_lamb(weights, grads, lr=0.01, wd=0.1, eps=1e-6)
    optimizer = create_optimizer("lamb", 0.01, total_steps=10, warmup_steps=0, weight_decay=0.1,
                                 global_clipnorm=1.0)
    assert isinstance(optimizer, Lamb)
    one, _ = _run_steps(tf.distribute.get_strategy(), optimizer, weights, [replicas])
    _assert_close(one, expected, 1e-6)
    # keras.optimizers.Lamb decays outside the trust ratio and adapts the bias too.
    stock = keras.optimizers.Lamb(0.01, epsilon=1e-6, weight_decay=0.1, global_clipnorm=1.0)
    stock.exclude_from_weight_decay(var_names=list(NO_DECAY))
    keras_one, _ = _run_steps(tf.distribute.get_strategy(), stock, weights, [replicas])
    assert _max_difference(keras_one, expected) > 1e-3


class _StepLinear(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = 0.1 * (step + 1): shows which counter the schedule is called with."""

    def __call__(self, step):
        return 0.1 * (keras.ops.cast(step, "float32") + 1.0)


def test_accumulation_on_two_replicas_equals_the_big_batch():
    weights = _variables()
    micro = [_replica_gradients(seed) for seed in (10, 11, 12, 13)]
    # Two updates of two micro-batches each: mean of the global gradients, clipped, then
    # SGD with decay at lr(update) = 0.1, 0.2 (the schedule sees applied updates).
    expected = weights
    for update, pair in enumerate((micro[:2], micro[2:])):
        mean = {k: (_global(pair[0])[k] + _global(pair[1])[k]) / 2 for k in weights}
        grads, norm = _clip(mean, clip_norm=1.0)
        assert norm > 1.0
        expected = _numpy_sgd(expected, grads, lr=0.1 * (update + 1), wd=0.1)
    with _mirrored().scope():
        optimizer = SGD(learning_rate=_StepLinear(), weight_decay=0.1, global_clipnorm=1.0,
                        gradient_accumulation_steps=2, no_decay_names=NO_DECAY)
    two, optimizer = _run_steps(_mirrored(), optimizer, weights, micro)
    _assert_close(two, expected, 1e-6)
    # optimizer.iterations (the checkpoint step) counts applied updates; Keras' own counter
    # (which Keras would hand the schedule) counts micro-batches.
    assert int(optimizer.iterations.numpy()) == 2
    assert int(optimizer._iterations.numpy()) == 4


def test_loss_scaling_unscales_before_clipping_and_skips_an_overflow_on_any_replica():
    weights = _variables()
    micro = [_replica_gradients(seed) for seed in (10, 11)]
    scale = 1024.0
    scaled = [[{k: (v * scale if k != "ids" else v) for k, v in r.items()} for r in pair]
              for pair in micro]
    mean = {k: (_global(micro[0])[k] + _global(micro[1])[k]) / 2 for k in weights}
    expected = _numpy_sgd(weights, _clip(mean, clip_norm=1.0)[0], lr=0.1, wd=0.1)
    with _mirrored().scope():
        optimizer = LossScaleOptimizer(
            SGD(learning_rate=0.1, weight_decay=0.1, global_clipnorm=1.0,
                gradient_accumulation_steps=2, no_decay_names=NO_DECAY),
            initial_scale=scale)
    two, optimizer = _run_steps(_mirrored(), optimizer, weights, scaled)
    _assert_close(two, expected, 1e-6)
    # Only the second replica overflows: Keras' LossScaleOptimizer asks the first replica
    # alone and applies the step (NaN weights); kbert's skips it and halves the scale.
    overflow = _replica_gradients(0)
    overflow[1]["kernel"][0, 0] = np.inf
    for make in (LossScaleOptimizer, keras.optimizers.LossScaleOptimizer):
        with _mirrored().scope():
            optimizer = make(SGD(learning_rate=0.1), initial_scale=2.0)
        after, optimizer = _run_steps(_mirrored(), optimizer, weights, [overflow])
        skipped = all(np.array_equal(after[k], weights[k].astype("float32")) for k in weights)
        assert skipped == (make is LossScaleOptimizer), make
        if skipped:
            assert float(optimizer.dynamic_scale.numpy()) == 1.0
            assert int(optimizer.iterations.numpy()) == 0


# --- a tiny BERT pretrainer trained with `fit` ------------------------------------------------

TINY = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 16, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def _pretraining_batch(examples, seed):
    """Token ids from 4 values (every id repeats), 3 of 5 masked slots weighted per example:
    every micro-batch of equally many examples then holds equally many masked tokens, the
    condition for the mean of micro-batch token means to equal the big batch's mean."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((examples, 5), "float32")
    for row in weights:
        row[rng.choice(5, 3, replace=False)] = 1.0
    return {
        "token_ids": rng.integers(5, 9, (examples, 12)).astype("int32"),
        "segment_ids": np.repeat([[0] * 6 + [1] * 6], examples, 0).astype("int32"),
        "padding_mask": np.ones((examples, 12), "int32"),
        "masked_lm_positions": rng.integers(1, 11, (examples, 5)).astype("int32"),
        "masked_lm_ids": rng.integers(5, 40, (examples, 5)).astype("int32"),
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.integers(0, 2, (examples,)).astype("int32"),
    }


def _split(batch, parts):
    size = len(batch["token_ids"]) // parts
    return [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(parts)]


def _dataset(batches):
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    return tf.data.Dataset.from_tensor_slices(stacked).map(split_features_for_fit)


_INITIAL = {}


def _initial_weights(dtype="float32"):
    if dtype not in _INITIAL:
        model = BertPretrainer(BertEncoder(**TINY, dtype=dtype))
        randomize(model, seed=4, scale=0.3)
        _INITIAL[dtype] = model.get_weights()
    return _INITIAL[dtype]


def _fit(make_optimizer, batches, strategy=None, eager=True, dtype="float32", **compile_args):
    """Trains a fresh tiny pretrainer (fixed initial weights) on `batches`, one per step."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = BertPretrainer(BertEncoder(**TINY, dtype=dtype))
        model.set_weights(_initial_weights())
        optimizer = compile_pretrainer(model, make_optimizer(), **compile_args)
    model.run_eagerly = eager
    model.fit(_dataset(batches), epochs=1, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()], optimizer


@functools.cache
def _gradient_norm(seed):
    """Global gradient norm of the loss of `_pretraining_batch(8, seed)` at the initial weights."""
    batch = _pretraining_batch(8, seed)
    model = BertPretrainer(BertEncoder(**TINY))
    model.set_weights(_initial_weights())
    compile_pretrainer(model, keras.optimizers.SGD())
    x, y, sample_weight = split_features_for_fit(batch)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x), sample_weight)
    return float(global_norm(tape.gradient(loss, model.trainable_variables)))


def _largest_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _moved(weights):
    return _largest_difference(weights, _initial_weights())


OPTIMIZER_RECIPES = {
    "sgd": lambda steps: SGD(learning_rate=0.5, weight_decay=0.1, global_clipnorm=0.2,
                             gradient_accumulation_steps=steps, no_decay_names=NO_DECAY),
    "adamw": lambda steps: create_optimizer("adamw", 1e-4, total_steps=4, warmup_steps=0,
                                            weight_decay=0.1, global_clipnorm=0.2,
                                            gradient_accumulation_steps=steps or 1),
    "lamb": lambda steps: create_optimizer("lamb", 1e-4, total_steps=4, warmup_steps=0,
                                           weight_decay=0.1, global_clipnorm=0.2,
                                           gradient_accumulation_steps=steps or 1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZER_RECIPES))
def test_four_micro_batches_equal_one_big_batch(name):
    big = [_pretraining_batch(8, seed) for seed in (20, 21)]
    assert _gradient_norm(20) > 0.2 * 2  # clipping is active
    make = OPTIMIZER_RECIPES[name]
    reference, _ = _fit(lambda: make(None), big)
    accumulated, optimizer = _fit(lambda: make(4), [m for b in big for m in _split(b, 4)])
    assert _moved(reference) > 1e-4
    assert _largest_difference(accumulated, reference) < 1e-6
    assert int(optimizer.iterations.numpy()) == 2  # applied updates, not micro-batches


@pytest.mark.slow  # ~8 s: tracing fit's step on two replicas (the optimizer path itself is
# covered on two replicas by test_accumulation_on_two_replicas_equals_the_big_batch)
def test_two_replicas_with_accumulation_in_fit_equal_the_big_batch():
    # Graph mode (as in training): MirroredStrategy, 2 micro-batches per update; the
    # reference is one replica, one big batch per step, eager.
    big = [_pretraining_batch(8, seed) for seed in (30, 31)]
    make = OPTIMIZER_RECIPES["adamw"]
    reference, _ = _fit(lambda: make(None), big)
    mirrored, optimizer = _fit(lambda: make(2), [m for b in big for m in _split(b, 2)],
                               strategy=_mirrored(), eager=False)
    assert _largest_difference(mirrored, reference) < 1e-6
    assert int(optimizer.iterations.numpy()) == 2


def test_steps_per_execution_is_refused_where_keras_fails():
    with _mirrored().scope(), pytest.raises(ValueError, match="keras-team/keras#19246"):
        compile_pretrainer(BertPretrainer(BertEncoder(**TINY)), SGD(learning_rate=0.1),
                           steps_per_execution=2)


def test_mixed_float16_scales_the_loss_and_clips_the_unscaled_gradient():
    batch = _pretraining_batch(8, 40)
    assert _gradient_norm(40) > 0.2 * 2  # clipping is active
    make = lambda: SGD(learning_rate=0.5, global_clipnorm=0.2)
    full, _ = _fit(make, [batch])
    half, optimizer = _fit(make, [batch], dtype="mixed_float16")
    assert isinstance(optimizer, LossScaleOptimizer)
    assert int(optimizer.iterations.numpy()) == 1  # applied, not skipped
    # The clipped update has norm lr * 0.2 = 0.1 either way; clipping the scaled gradient
    # would shrink it by the loss scale (2**15).
    full_update = [w - i for w, i in zip(full, _initial_weights())]
    half_update = [w - i for w, i in zip(half, _initial_weights())]
    np.testing.assert_allclose(np.sqrt(sum((u**2).sum() for u in half_update)), 0.1, rtol=1e-3)
    assert _largest_difference(half_update, full_update) < 0.02 * max(
        float(np.abs(u).max()) for u in full_update)


def test_mixed_float16_skips_an_overflowing_step():
    model = BertPretrainer(BertEncoder(**TINY, dtype="mixed_float16"))
    model.set_weights(_initial_weights())
    optimizer = compile_pretrainer(model, SGD(learning_rate=0.5, global_clipnorm=0.2))
    model.run_eagerly = True
    model.fit(_dataset([_pretraining_batch(8, 41)]), verbose=0, shuffle=False)
    optimizer.dynamic_scale.assign(2.0**60)  # the float16 backward pass overflows
    before = [np.asarray(w) for w in model.get_weights()]
    model.fit(_dataset([_pretraining_batch(8, 42)]), verbose=0, shuffle=False)
    assert _largest_difference([np.asarray(w) for w in model.get_weights()], before) == 0.0
    assert int(optimizer.iterations.numpy()) == 1
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**59


@pytest.mark.slow  # XLA-compiling the train step takes ~10 s on 2 CPU cores
def test_xla_with_steps_per_execution_and_accumulation_matches_eager():
    big = [_pretraining_batch(8, seed) for seed in (50, 51)]
    micro = [m for b in big for m in _split(b, 2)]
    shapes = check_static_shapes(_dataset(micro), batch_size=4)
    assert shapes["x/token_ids"] == (4, 12)
    make = OPTIMIZER_RECIPES["adamw"]
    eager, _ = _fit(lambda: make(None), big)
    xla, optimizer = _fit(lambda: make(2), micro, eager=False, jit_compile=True,
                          steps_per_execution=2)
    assert int(optimizer.iterations.numpy()) == 2
    assert _largest_difference(xla, eager) < 1e-6


def test_static_shapes_name_the_feature_and_the_fix():
    batch = _pretraining_batch(5, 52)
    ragged_batches = tf.data.Dataset.from_tensor_slices(batch).batch(2).map(split_features_for_fit)
    with pytest.raises(ValueError, match=r"x/token_ids has shape \(None, 12\): unknown batch "
                                         r"size, batch with drop_remainder=True"):
        check_static_shapes(ragged_batches)
    fixed = tf.data.Dataset.from_tensor_slices(batch).batch(2, drop_remainder=True)
    assert check_static_shapes(fixed)["token_ids"] == (2, 12)
    with pytest.raises(ValueError, match="token_ids has batch size 2, not 4"):
        check_static_shapes(fixed, batch_size=4)
    padded = tf.data.Dataset.from_tensor_slices(batch).map(lambda f: f["token_ids"]).map(
        lambda ids: ids[: tf.reduce_sum(ids) % 12 + 1]).batch(2, drop_remainder=True)
    with pytest.raises(ValueError, match=r"element has shape \(2, None\): pad dimension 1"):
        check_static_shapes(padded)


def _guarded_fit(tmp_path, batches, learning_rate, guard):
    model = BertPretrainer(BertEncoder(**TINY))
    model.set_weights(_initial_weights())
    optimizer = compile_pretrainer(model, SGD(learning_rate=learning_rate))
    model.run_eagerly = True
    checkpoint = TrainingCheckpoint(model, optimizer, str(tmp_path), max_to_keep=10)
    with pytest.raises(NonFiniteLossError) as raised:
        model.fit(_dataset(batches), verbose=0, shuffle=False,
                  callbacks=[guard, CheckpointCallback(checkpoint, every_n_steps=1)])
    saved = sorted(int(path.rsplit("-", 1)[1]) for path in checkpoint.manager.checkpoints)
    return str(raised.value), saved


def test_a_nan_loss_stops_the_run_before_its_checkpoint(tmp_path):
    batches = [_pretraining_batch(4, seed) for seed in range(60, 65)]
    batches[2]["masked_lm_weights"][1, :] = np.nan  # a poisoned third batch
    message, saved = _guarded_fit(tmp_path / "nan", batches, 0.1, NonFiniteGuard())
    assert "Non-finite training loss at step 3 (batch 2 of the epoch)" in message
    assert saved == [1, 2]
    # A finite loss whose update overflows the weights: caught before their checkpoint.
    message, saved = _guarded_fit(tmp_path / "inf", batches[:2], float("inf"),
                                  NonFiniteGuard(check_weights_every=1))
    assert message.startswith("Non-finite weights at step 1:")
    assert saved == []


def test_phase_two_starts_from_the_phase_one_weights(tmp_path):
    phase_one = BertPretrainer(BertEncoder(**TINY))
    randomize(phase_one, seed=6, scale=0.2)
    phase_one.encoder.bert_config.to_json_file(str(tmp_path / "bert_config.json"))
    prefix = TrainingCheckpoint(phase_one, SGD(learning_rate=0.1), str(tmp_path)).save()
    phase_one.save(str(tmp_path / "pretrainer.keras"))
    expected = read_model(phase_one)
    for source in (prefix, str(tmp_path)):
        phase_two = BertPretrainer(BertEncoder(**{**TINY, "max_position_embeddings": 32}))
        initial = read_model(phase_two)
        init_from_checkpoint(phase_two, source)
        loaded = read_model(phase_two)
        for name, value in expected.items():
            if name == "bert/embeddings/position_embeddings":
                np.testing.assert_array_equal(loaded[name][:16], value)
                np.testing.assert_array_equal(loaded[name][16:], initial[name][16:])
            else:
                np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    shorter = BertPretrainer(BertEncoder(**{**TINY, "max_position_embeddings": 8}))
    with pytest.raises(ValueError, match="has 16 position embeddings but the model only "
                                         "max_position_embeddings=8"):
        init_from_checkpoint(shorter, prefix)
