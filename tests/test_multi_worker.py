"""Multi-worker `model.fit` (MultiWorkerMirroredStrategy, 2 worker processes on 127.0.0.1).

One job (tests/multi_worker_job.py) serves all the process tests: session 1
meets the Keras bugs without kbert's fix, then trains the tiny pretrainer
until worker 1 SIGKILLs itself after step 6 (the chief's checkpoint of step
4 is written); worker 0 is left to fail on its own. Session 2 restarts both
workers: they resume the pretrainer and train the classifier. The reference
is the same training in this process under the default strategy.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kbert.training import multi_worker
from tests import multi_worker_job as job
from tests.conftest import REPO

STEPS = 12
EVERY = 4
DIE_AT = 6
SESSION_SECONDS = 300
RECORD_FILES, RECORDS_PER_FILE = 4, 8


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _log_tail(path, lines=40):
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


@contextlib.contextmanager
def _workers(out_dir, session, extra_args, command=None):
    """Starts one process per entry of `extra_args` as the workers of a fresh cluster.

    Worker `i` runs `command + extra_args[i]` (default command: this file's
    job, tests/multi_worker_job.py, on `out_dir`) with its `TF_CONFIG`, its
    output in `out_dir/session<session>_worker<i>.log`. Yields the
    `subprocess.Popen`s; on leaving (also on failure) kills every one still
    running, so no worker outlives the test.
    """
    if command is None:
        command = [sys.executable, "-m", "tests.multi_worker_job", f"--out_dir={out_dir}",
                   f"--steps={STEPS}", f"--checkpoint_every={EVERY}"]
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(len(extra_args))]
    processes = []
    try:
        for index, args in enumerate(extra_args):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
            with open(out_dir / f"session{session}_worker{index}.log", "w") as log:
                processes.append(subprocess.Popen(
                    [*command, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                ))
        yield processes
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()


def _wait(process, deadline, log):
    try:
        return process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker timed out; its log ends:\n{_log_tail(log)}")


def _lines(path):
    """A step log as one list of (step, loss)."""
    with open(path, encoding="utf-8") as f:
        return [(int(step), float(loss)) for step, loss in (line.split() for line in f)]


def _steps(path):
    """A worker's step log as sessions: lists of (step, loss); a new session restarts the count."""
    sessions = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            step, loss = line.split()
            if not sessions or int(step) <= sessions[-1][-1][0]:
                sessions.append([])
            sessions[-1].append((int(step), float(loss)))
    return sessions


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory):
    """Runs the two sessions and the single-process reference; returns their output folders."""
    out = tmp_path_factory.mktemp("multi_worker")
    reference = tmp_path_factory.mktemp("single_process")
    logs = [out / f"session1_worker{i}.log" for i in (0, 1)]
    started = time.monotonic()
    seconds = {}
    with _workers(out, 1, [["--check_keras_bug"], ["--check_keras_bug", f"--die_at_step={DIE_AT}"]]
                  ) as (chief, other):
        deadline = time.time() + SESSION_SECONDS
        assert _wait(other, deadline, logs[1]) == -signal.SIGKILL, _log_tail(logs[1])
        seconds["worker 1 killed"] = time.monotonic() - started
        # While the chief waits for its dead peer: the reference, eagerly, in this process.
        for kind in job.MODELS:
            job.train(kind, tf.distribute.get_strategy(), STEPS, str(reference), "single", EVERY,
                      run_eagerly=True)
        seconds["reference"] = time.monotonic() - started
        chief_code = _wait(chief, time.time() + 60, logs[0])
        seconds["worker 0 failed"] = time.monotonic() - started
    records = tmp_path_factory.mktemp("records")
    job.write_records(str(records), RECORD_FILES, RECORDS_PER_FILE)
    read = [f"--record_files={records}/records-*.tfrecord"]
    with _workers(out, 2, [read, read]) as workers:
        deadline = time.time() + SESSION_SECONDS
        for i, p in enumerate(workers):
            code = _wait(p, deadline, out / f"session2_worker{i}.log")
            assert code == 0, _log_tail(out / f"session2_worker{i}.log")
    seconds["session 2"] = time.monotonic() - started
    print("multi-worker job timeline:", {k: round(v, 1) for k, v in seconds.items()})
    return {"out": out, "reference": reference, "chief_code": chief_code,
            "chief_log": _log_tail(logs[0], 200)}


def test_keras_fit_fails_under_multi_worker_without_the_fix(multi_worker_run):
    # The two upstream bugs (keras-team/keras#20329, #20585), as each worker met them.
    assert multi_worker.keras_needs_fix()
    for index in (0, 1):
        with open(multi_worker_run["out"] / f"keras_bug_worker{index}.json") as f:
            seen = json.load(f)
        assert seen["fit"].startswith(
            "ValueError: Attempt to convert a value ({'token_ids': PerReplica"), seen["fit"]
        assert "with an unsupported type (<class 'dict'>)" in seen["fit"]
        assert seen["reduce"].startswith("ValueError"), seen["reduce"]
        assert "Invalid reduction dimension 0 for input with 0 dimensions" in seen["reduce"]
        assert seen["reduce_fixed"] == 0.5  # the mean of the replica ids 0 and 1


@pytest.mark.parametrize("kind", ["pretrainer", "classifier"])
def test_two_workers_train_like_one_process(multi_worker_run, kind):
    out, reference = multi_worker_run["out"], multi_worker_run["reference"]
    expected = dict(_steps(reference / f"{kind}_single.steps")[0])
    assert sorted(expected) == list(range(1, STEPS + 1))
    if kind == "pretrainer":  # the two workers' halves hold different numbers of masked tokens
        halves = job.global_batches(kind, STEPS)["masked_lm_weights"].reshape(STEPS, 2, -1)
        assert (halves[:, 0].sum(-1) != halves[:, 1].sum(-1)).sum() >= STEPS // 2
    weights = [np.load(out / f"{kind}_worker{i}.npz") for i in (0, 1)]
    single = np.load(reference / f"{kind}_single.npz")
    max_loss_diff = max_weight_diff = 0.0
    for index in (0, 1):
        for session in _steps(out / f"{kind}_worker{index}.steps"):
            for step, loss in session:
                max_loss_diff = max(max_loss_diff, abs(loss - expected[step]))
        for name in single.files:
            np.testing.assert_array_equal(weights[index][name], weights[0][name])
            max_weight_diff = max(max_weight_diff,
                                  float(np.abs(weights[index][name] - single[name]).max()))
    print(f"{kind}: max loss diff {max_loss_diff:.2e}, max weight diff {max_weight_diff:.2e}")
    assert max_loss_diff < 1e-4
    assert max_weight_diff < 1e-4
    # Training moved the loss (a curve, not a constant) and the weights.
    assert np.ptp(list(expected.values())) > 0.1


def test_two_workers_accumulate_like_one_process(multi_worker_run):
    # Gradient accumulation under MultiWorkerMirroredStrategy (the micro-batch gradient summed
    # over workers, accumulated, applied every ACCUMULATION batches) against one process.
    out, reference = multi_worker_run["out"], multi_worker_run["reference"]
    expected = _lines(reference / "accumulating_single.steps")
    updates = [step for step, _ in expected]
    assert updates == [(i + 1) // job.ACCUMULATION for i in range(STEPS)]  # 0, 1, 1, 2, 2, ...
    single = np.load(reference / "accumulating_single.npz")
    pretrained = np.load(reference / "pretrainer_single.npz")  # one update per batch: different
    assert max(np.abs(single[n] - pretrained[n]).max() for n in single.files) > 1e-2
    for index in (0, 1):
        session = _lines(out / f"accumulating_worker{index}.steps")
        assert [step for step, _ in session] == updates
        np.testing.assert_allclose([loss for _, loss in session], [loss for _, loss in expected],
                                   atol=1e-4)
        weights = np.load(out / f"accumulating_worker{index}.npz")
        for name in single.files:
            np.testing.assert_allclose(weights[name], single[name], atol=1e-4)
    assert np.ptp([loss for _, loss in expected]) > 0.1


def test_two_workers_read_disjoint_tfrecord_files(multi_worker_run):
    # kbert's TFRecord pipeline under MultiWorkerMirroredStrategy, distributed as `fit` does:
    # sharded by FILE, each worker reads whole files of its own, together every record once.
    seen = []
    for index in (0, 1):
        with open(multi_worker_run["out"] / f"records_worker{index}.json") as f:
            result = json.load(f)
        assert result["policy"] == "FILE"
        seen.append(result["first_token_ids"])
    files = [{i // 1000 for i in ids} for ids in seen]
    assert files[0].isdisjoint(files[1]) and len(files[0]) == len(files[1]) == RECORD_FILES // 2
    for ids, own in zip(seen, files):  # whole files, each record once
        assert sorted(ids) == sorted(1000 * f + r for f in own for r in range(RECORDS_PER_FILE))


def test_killed_worker_job_restarts_from_the_chief_checkpoint(multi_worker_run):
    out = multi_worker_run["out"]
    # The surviving worker is not left hanging: its collective is aborted.
    assert multi_worker_run["chief_code"] not in (0, -signal.SIGKILL)
    assert "UnavailableError" in multi_worker_run["chief_log"]
    assert "stopped sending heartbeats" in multi_worker_run["chief_log"]
    for index in (0, 1):
        sessions = [[step for step, _ in s] for s in _steps(out / f"pretrainer_worker{index}.steps")]
        assert sessions == [list(range(1, DIE_AT + 1)), list(range(EVERY + 1, STEPS + 1))]
        trained_twice = set(sessions[0]) & set(sessions[1])
        assert len(trained_twice) <= EVERY
    # Only the chief's folder holds checkpoints; worker 1's temporary copy is gone.
    assert tf.train.latest_checkpoint(str(out / "pretrainer_ckpt")).endswith(f"ckpt-{STEPS}")
    assert not (out / "pretrainer_ckpt" / "workertemp_1").exists()


# --- In-process checks ---------------------------------------------------------------------

CLUSTER = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}


def test_parse_tf_config():
    task = multi_worker.parse_tf_config(json.dumps({"cluster": CLUSTER,
                                                    "task": {"type": "worker", "index": 1}}))
    assert (task.task_type, task.task_index, task.num_workers, task.is_chief) == ("worker", 1, 2, False)
    chief = multi_worker.parse_tf_config(json.dumps(
        {"cluster": {"chief": ["h:1"], **CLUSTER}, "task": {"type": "worker", "index": 0}}))
    assert (chief.num_workers, chief.is_chief) == (3, False)
    evaluator = multi_worker.parse_tf_config(json.dumps(
        {"cluster": {"evaluator": ["h:1"], **CLUSTER}, "task": {"type": "evaluator", "index": 0}}))
    assert (evaluator.num_workers, evaluator.is_chief) == (2, False)
    assert multi_worker.parse_tf_config("") is None


@pytest.mark.parametrize(("config", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ({"task": {"type": "worker", "index": 0}}, "'cluster'"),
    ({"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}, "'cluster.ps'"),
    ({"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}, "'cluster.worker'"),
    ({"cluster": {"evaluator": ["h:1"]}, "task": {"type": "evaluator", "index": 0}},
     "'cluster' has no training job"),
    ({"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}},
     "'cluster.chief' lists 2 tasks; at most 1"),
    ({"cluster": {"worker": ["h:1", "h:99999"]}, "task": {"type": "worker", "index": 0}},
     r"'cluster.worker\[1\]'.*port in 1..65535; received 'h:99999'"),
    ({"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}},
     r"'cluster.worker\[1\]'.*also 'cluster.worker\[0\]'"),
    ({"cluster": CLUSTER}, "'task'"),
    ({"cluster": CLUSTER, "task": {"type": "chief", "index": 0}}, "'task.type'='chief'"),
    ({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}, r"'task.index'=2 .*\[0, 2\)"),
    ({"cluster": CLUSTER, "task": {"type": "worker", "index": "0"}}, "'task.index'='0'"),
])
def test_parse_tf_config_names_the_bad_key(config, message):
    text = config if isinstance(config, str) else json.dumps(config)
    with pytest.raises(ValueError, match=message):
        multi_worker.parse_tf_config(text)


def test_strategy_after_another_op_is_refused(monkeypatch):
    ports = _free_ports(2)
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": 0}}))
    tf.constant(0)  # TensorFlow is initialised (as always in this test process)
    with pytest.raises(RuntimeError, match="must be created before any other TensorFlow op"):
        multi_worker.create_multi_worker_strategy()


def test_barrier_counts_replicas():
    assert multi_worker.barrier(tf.distribute.get_strategy()) == 1
    assert multi_worker.barrier(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])) == 2


def test_shard_for_workers_policy():
    data = tf.data.Dataset.range(8).batch(4)
    policy = tf.data.experimental.AutoShardPolicy
    assert multi_worker.shard_for_workers(data).options().experimental_distribute.auto_shard_policy \
        == policy.DATA
    by_file = multi_worker.shard_for_workers(data, files=["a", "b"], num_workers=2)
    assert by_file.options().experimental_distribute.auto_shard_policy == policy.FILE
    with pytest.raises(ValueError, match="1 input file.* 2 workers"):
        multi_worker.shard_for_workers(data, files=["a"], num_workers=2)


def test_keras_fix_version_range_and_install():
    assert multi_worker.keras_needs_fix("3.15.1")
    assert multi_worker.keras_needs_fix("3.0.0")
    assert not multi_worker.keras_needs_fix("3.16.0")
    assert not multi_worker.keras_needs_fix("2.15.0")
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    try:
        assert multi_worker.install_keras_fix() == multi_worker.FIX_PARTS
        patched = trainer.reduce_per_replica
        assert patched is not original
        assert multi_worker.install_keras_fix() == multi_worker.FIX_PARTS  # idempotent
        assert trainer.reduce_per_replica is patched
        # Off multi-worker strategies it defers to Keras: a per-replica mean as before.
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(float(ctx.replica_id_in_sync_group)))
        assert float(patched({"loss": values}, strategy, "auto")["loss"]) == 0.5
    finally:
        multi_worker.uninstall_keras_fix()
    assert trainer.reduce_per_replica is original
    with pytest.raises(ValueError, match="Unknown fix parts"):
        multi_worker.install_keras_fix(("everything",))
