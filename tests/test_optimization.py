"""Optimizers: global-norm clipping after the all-reduce, accumulation, LAMB, loss scaling.

The references are NumPy transcriptions of the published updates (BERT's
`tf.clip_by_global_norm`, Keras' Adam, You et al. 2020 Algorithm 2 for LAMB),
fed with gradients given per replica; MirroredStrategy runs on the two logical
CPUs that tests/conftest.py sets up.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.training import Lamb, create_optimizer
from kbert.training.gradients import global_norm
from kbert.training.optimization import SGD, AdamW

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
    global MIRRORED
    if MIRRORED is None:
        MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
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
