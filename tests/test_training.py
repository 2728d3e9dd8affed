"""Training: replica-independent loss, LR schedule, and resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.data import split_features_for_fit
from kbert.models import BertEncoder, BertPretrainer
from kbert.training import (
    MaskedLMLoss,
    WarmupLinearDecay,
    compile_pretrainer,
    create_adamw,
)
from tests.conftest import REPO
from tests.numpy_bert import randomize

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)


def _uneven_batch():
    """4 examples; the first two (replica 0) hold 1 masked token each, the last two 5."""
    rng = np.random.default_rng(0)
    weights = np.zeros((4, 5), "float32")
    weights[:2, :1] = 1.0
    weights[2:, :] = 1.0
    return {
        "token_ids": rng.integers(5, 40, (4, 12)).astype("int32"),
        "segment_ids": np.repeat([[0] * 6 + [1] * 6], 4, 0).astype("int32"),
        "padding_mask": np.ones((4, 12), "int32"),
        "masked_lm_positions": rng.integers(1, 11, (4, 5)).astype("int32"),
        "masked_lm_ids": rng.integers(5, 40, (4, 5)).astype("int32"),
        "masked_lm_weights": weights,
        "next_sentence_labels": np.array([0, 1, 1, 0], "int32"),
    }


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _train_one_step(strategy, initial_weights, batch):
    with strategy.scope():
        model = BertPretrainer(BertEncoder(**SMALL))
        model.set_weights(initial_weights)
        compile_pretrainer(model, keras.optimizers.SGD(learning_rate=1.0))
    dataset = tf.data.Dataset.from_tensors(batch).map(split_features_for_fit)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history
    return history, [w.numpy() if hasattr(w, "numpy") else w for w in model.get_weights()]


def test_mlm_loss_and_update_equal_on_one_and_two_replicas():
    reference = BertPretrainer(BertEncoder(**SMALL))
    randomize(reference, scale=0.2)
    initial = reference.get_weights()
    batch = _uneven_batch()
    # Independent expectation: token-mean cross-entropy over the global batch.
    logits = reference({k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")})
    log_p = _log_softmax(logits["masked_lm_logits"].numpy().astype(np.float64))
    ce = -np.take_along_axis(log_p, batch["masked_lm_ids"][..., None], -1)[..., 0]
    w = batch["masked_lm_weights"]
    expected_mlm = (ce * w).sum() / w.sum()

    one, weights_one = _train_one_step(tf.distribute.get_strategy(), initial, batch)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    two, weights_two = _train_one_step(mirrored, initial, batch)

    np.testing.assert_allclose(one["masked_lm_logits_loss"][0], expected_mlm, rtol=1e-5)
    np.testing.assert_allclose(two["masked_lm_logits_loss"][0], expected_mlm, rtol=1e-5)
    np.testing.assert_allclose(two["loss"][0], one["loss"][0], rtol=1e-5)
    changed = 0
    for a, b, start in zip(weights_one, weights_two, initial):
        np.testing.assert_allclose(a, b, atol=2e-6)
        changed += np.abs(a - start).max() > 1e-4
    assert changed > len(initial) // 2  # the step really moved the weights


def test_masked_lm_loss_ignores_zero_weights():
    loss = MaskedLMLoss()
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]], "float32"))
    value = loss(np.array([[0, 2]]), logits, sample_weight=np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(value, -np.log(0.5), rtol=1e-6)


def test_warmup_linear_decay_values():
    schedule = WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=110)
    values = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    restored = WarmupLinearDecay.from_config(schedule.get_config())
    assert float(restored(60)) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="warmup_steps=10, total_steps=5"):
        WarmupLinearDecay(1e-3, 10, 5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"learning_rate": float("nan")}, "peak_learning_rate=nan must be a finite number > 0"),
    ({"gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps=2.5 must be an int >= 1"),
    ({"beta_1": 1.5}, r"beta_1=1.5 must be in \[0, 1\)"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1 must be a finite number >= 0"),
    ({"epsilon": 0.0}, "epsilon=0.0 must be > 0"),
])
def test_create_optimizer_names_a_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_adamw(**{"learning_rate": 1e-3, "total_steps": 100, **kwargs})


def test_create_optimizer_defaults_for_short_runs():
    # A 1-step run gets no warmup (its only update at the peak rate); weight_decay=None is off.
    optimizer = create_adamw(1e-3, total_steps=1, weight_decay=None)
    schedule = optimizer._learning_rate
    assert (schedule.warmup_steps, float(schedule(0))) == (0, pytest.approx(1e-3))
    assert not optimizer.weight_decay
    assert create_adamw(1e-3, total_steps=5)._learning_rate.warmup_steps == 1


def test_adamw_excludes_layer_norm_and_bias_from_decay():
    model = BertPretrainer(BertEncoder(**SMALL))
    optimizer = create_adamw(1e-3, total_steps=100)
    optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert any(p.endswith("query/kernel") for p in decayed)
    assert any(p.endswith("token_embedding/embeddings") for p in decayed)
    assert not any(p.endswith(("gamma", "beta", "bias")) for p in decayed)


def _trainer_command(model_dir, corpus, vocab):
    return [
        sys.executable, "-m", "trainers.pretrain", f"--model_dir={model_dir}",
        f"--corpus={corpus}", f"--vocab_file={vocab}", "--preset=bert_tiny",
        "--strategy=mirrored", "--num_cpu_devices=2", "--train_steps=30",
        "--checkpoint_every=10", "--global_batch_size=8", "--sequence_length=64",
        "--max_predictions_per_seq=8", "--dupe_factor=1",
    ]


def test_pretrain_resumes_after_kill(tmp_path, wikitext_valid, uncased_vocab):
    corpus = tmp_path / "corpus.txt"
    with open(wikitext_valid, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:400]), encoding="utf-8")
    model_dir = tmp_path / "run"
    command = _trainer_command(model_dir, corpus, uncased_vocab)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (model_dir / "ckpt-10.index").exists():
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    # summary.json follows each checkpoint (a kill may fall between the two).
    summary_path = model_dir / "summary.json"
    killed_summary = (json.loads(summary_path.read_text()) if summary_path.exists()
                      else {"finished": False, "sessions": []})
    assert not killed_summary["finished"], "the first run finished before the kill"
    killed_at = max(int(p.name.split("-")[1].split(".")[0]) for p in model_dir.glob("ckpt-*.index"))
    assert killed_at in (10, 20)

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"Starting at step {killed_at} of 30 (--strategy=mirrored, 2 replica(s), " in second.stdout
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["start_step"] == killed_at and summary["final_step"] == 30
    # The killed session's time (up to its last summarised checkpoint) still counts.
    assert summary["sessions"][:-1] == killed_summary["sessions"]
    assert summary["sessions"][-1]["start_step"] == killed_at
    with open(model_dir / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    # Epochs logged by the resumed run start where the killed one stopped.
    assert epochs[-(3 - killed_at // 10):] == list(range(killed_at // 10, 3))

    # A rerun that asks for another model is refused and leaves the run intact.
    config_before = (model_dir / "bert_config.json").read_text()
    other = subprocess.run([*command, "--preset=bert_mini"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert other.returncode != 0
    assert "holds a run with other settings (bert_config.hidden_size: 128 -> 256;" in other.stderr
    assert "preset: 'bert_tiny' -> 'bert_mini'" in other.stderr
    assert (model_dir / "bert_config.json").read_text() == config_before


@pytest.mark.slow  # the interval arithmetic: test_pretrain_program.test_fit_intervals_*
def test_pretrain_checkpoint_interval_need_not_divide_train_steps(tmp_path):
    # 9 steps, a checkpoint every 4: intervals of 4, 4 and 1, a checkpoint after each.
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "trainers.pretrain", f"--model_dir={model_dir}",
         "--train_steps=9", "--checkpoint_every=4", "--global_batch_size=4",
         "--sequence_length=32", "--max_predictions_per_seq=4", "--dupe_factor=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((model_dir / "summary.json").read_text())["final_step"] == 9
    steps = sorted(int(p.name.split("-")[1].split(".")[0]) for p in model_dir.glob("ckpt-*.index"))
    assert steps == [4, 8, 9]
    with open(model_dir / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2]


def test_sparse_softmax_cross_entropy_matches_numpy_and_keras_gradients():
    from kbert.training.losses import sparse_softmax_cross_entropy

    rng = np.random.default_rng(5)
    logits = tf.constant(rng.normal(0, 3, (3, 4, 50)), tf.float32)
    labels = tf.constant(rng.integers(0, 50, (3, 4)), tf.int32)
    upstream = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    results = []
    for fn in (sparse_softmax_cross_entropy,
               lambda y, x: keras.losses.sparse_categorical_crossentropy(y, x, from_logits=True)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fn(labels, logits)
            total = tf.reduce_sum(loss * upstream)
        results.append((loss, tape.gradient(total, logits)))
    x = logits.numpy().astype(np.float64)
    log_sum_exp = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    expected = log_sum_exp - np.take_along_axis(x, labels.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    # Logits far beyond exp's float32 range: softmax is shift-invariant, so the same losses.
    shifted = sparse_softmax_cross_entropy(labels, logits + 1000.0)
    np.testing.assert_allclose(shifted, expected, rtol=1e-4, atol=1e-3)
    # Keras' (..., 1) labels are the same labels; other shapes are refused, naming both.
    np.testing.assert_allclose(sparse_softmax_cross_entropy(labels[..., None], logits), results[0][0])
    with pytest.raises(ValueError, match=r"received labels \(2,\) and logits \(3, 4, 50\)"):
        sparse_softmax_cross_entropy(labels[:2, 0], logits)
    dynamic = tf.function(sparse_softmax_cross_entropy, input_signature=[
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 50], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have the shape of `logits`"):
        dynamic(labels[:2, 0], logits[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be < vocab_size"):
        sparse_softmax_cross_entropy(tf.constant([[50]]), logits[:1, :1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be >= 0"):
        sparse_softmax_cross_entropy(tf.constant([[-1]]), logits[:1, :1])
