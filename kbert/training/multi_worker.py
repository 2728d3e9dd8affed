"""Multi-worker data parallelism: `MultiWorkerMirroredStrategy` (MWMS) over `TF_CONFIG` workers.

What a multi-worker run needs beyond `strategy.scope()` and `model.fit`:

* `parse_tf_config` reads and checks `TF_CONFIG` (the cluster's `host:port`
  addresses and this process's task), naming the key of a malformed one.
* `create_multi_worker_strategy` creates the strategy, which must come before
  any other TensorFlow op (TF configures its collective ops at startup), and
  installs `install_keras_fix` (`kbert.training.keras_fix`, re-exported here)
  where the installed Keras needs it.
* `shard_for_workers` gives each worker its share of the input: by file
  (`AutoShardPolicy.FILE`) when the data comes from enough files, by element
  (`DATA`) otherwise.
* `WorkerCheckpoint` resumes after a restart. Every worker saves (a save may
  read variables that need a collective), the chief into the real folder and
  the others into temporary folders, as TensorFlow's multi-worker guide
  prescribes (https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras,
  "Model saving and loading"); every worker restores from the chief's folder,
  so the folder must be shared (a network file system, GCS) across hosts.

Faults: when a worker dies, its peers' next collective blocks until
TensorFlow's coordination service misses the dead task's heartbeats (about
10 s in TF 2.20); their `fit` then raises `tf.errors.UnavailableError` ("The
following tasks are unhealthy (stopped sending heartbeats)... Restart your
program to reset") and the processes exit: a collective group cannot be
rejoined in-process, so the cluster manager (Kubernetes, Slurm, a TFJob)
restarts the whole job, and every worker resumes from the chief's newest
checkpoint. So at most one checkpoint interval of steps is trained again.
`keras.callbacks.BackupAndRestore` is not used for that: in Keras 3.15 it
restores at epoch granularity only, and every worker writes the same
`latest.weights.h5` (no chief/temporary split, a race on a shared folder).
"""

import dataclasses
import json
import os
import shutil

import tensorflow as tf
from absl import logging

from kbert.training.checkpointing import TrainingCheckpoint
from kbert.training.keras_fix import (  # noqa: F401  (re-exported: multi_worker.install_keras_fix, ...)
    AFFECTED_KERAS,
    FIX_PARTS,
    install_keras_fix,
    keras_needs_fix,
    uninstall_keras_fix,
)

# --- TF_CONFIG ----------------------------------------------------------------------------

TRAINING_JOBS = ("chief", "worker")
JOBS = (*TRAINING_JOBS, "evaluator")  # an evaluator task trains nothing (TF's side-car evaluation)


@dataclasses.dataclass(frozen=True)
class WorkerTask:
    """This process's place in a multi-worker cluster, from `TF_CONFIG`.

    Attributes:
        cluster: dict job name -> list of "host:port" addresses.
        task_type: "chief", "worker" or "evaluator".
        task_index: int, index into `cluster[task_type]`.
        num_workers: int, training tasks in the cluster (chief + workers; not
            the evaluator).
        is_chief: bool, the task that writes run outputs: the "chief" task, or
            worker 0 when the cluster has no chief (TensorFlow's convention,
            `tf.distribute` `multi_worker_util.is_chief`); never the evaluator.
    """

    cluster: dict
    task_type: str
    task_index: int
    num_workers: int
    is_chief: bool


def parse_tf_config(text=None):
    """Parses and checks a `TF_CONFIG` for `MultiWorkerMirroredStrategy`.

    The format TensorFlow reads (`TFConfigClusterResolver`):
    `{"cluster": {"worker": ["host:port", ...], "chief": [...]}, "task":
    {"type": "worker", "index": 0}}`.

    Args:
        text: str, the JSON; default: the `TF_CONFIG` environment variable.

    Returns:
        `WorkerTask`, or None when `TF_CONFIG` is unset or empty (one
        worker, no cluster).

    Raises:
        ValueError: not a JSON object, or a malformed key, named with the
            value and what is allowed: `cluster` missing or not an object, a
            job other than "chief"/"worker"/"evaluator" (e.g. "ps", which needs
            `ParameterServerStrategy`), no "chief" or "worker" task, a job's
            addresses not a non-empty list
            of "host:port" with a port in 1..65535, an address used twice,
            more than one chief or evaluator, `task` missing, `task.type` not a job of the
            cluster, `task.index` not an int within that job.
    """
    if text is None:
        text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}") from e
    if not isinstance(config, dict):
        raise ValueError(  # noqa: TRY004 (a malformed TF_CONFIG is a bad value)
            f"TF_CONFIG must be a JSON object; received {type(config).__name__}."
        )
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            f"TF_CONFIG key 'cluster' must be a non-empty object of job -> addresses; "
            f"received {cluster!r}."
        )
    seen = {}
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise ValueError(
                f"TF_CONFIG key 'cluster.{job}': MultiWorkerMirroredStrategy runs the jobs "
                f"{JOBS} only ('ps' tasks need ParameterServerStrategy)."
            )
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(
                f"TF_CONFIG key 'cluster.{job}' must be a non-empty list of 'host:port' "
                f"strings; received {addresses!r}."
            )
        for i, address in enumerate(addresses):
            _check_address(f"cluster.{job}[{i}]", address)
            if address in seen:
                raise ValueError(
                    f"TF_CONFIG key 'cluster.{job}[{i}]': address {address!r} is also "
                    f"'cluster.{seen[address]}'; every task needs its own port."
                )
            seen[address] = f"{job}[{i}]"
    for job in ("chief", "evaluator"):
        if len(cluster.get(job, [])) > 1:
            raise ValueError(
                f"TF_CONFIG key 'cluster.{job}' lists {len(cluster[job])} tasks; at most 1."
            )
    if not any(job in cluster for job in TRAINING_JOBS):
        raise ValueError(
            f"TF_CONFIG key 'cluster' has no training job {TRAINING_JOBS}: {sorted(cluster)}."
        )
    task = config.get("task")
    if not isinstance(task, dict):
        raise ValueError(  # noqa: TRY004 (a malformed TF_CONFIG is a bad value)
            f"TF_CONFIG key 'task' must be an object like {{'type': 'worker', 'index': 0}}; "
            f"received {task!r}."
        )
    task_type = task.get("type")
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG key 'task.type'={task_type!r} must be a job of the cluster: "
            f"{sorted(cluster)}."
        )
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG key 'task.index'={index!r} must be an int in "
            f"[0, {len(cluster[task_type])}) for the {len(cluster[task_type])} "
            f"'{task_type}' address(es)."
        )
    is_chief = task_type == "chief" or (task_type == "worker" and "chief" not in cluster and index == 0)
    return WorkerTask(
        cluster=cluster,
        task_type=task_type,
        task_index=index,
        num_workers=sum(len(cluster.get(job, [])) for job in TRAINING_JOBS),
        is_chief=is_chief,
    )


def _check_address(key, address):
    """Raises ValueError naming `key` unless `address` is "host:port" with a port in 1..65535."""
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"TF_CONFIG key '{key}' must be a 'host:port' string with a port in 1..65535; "
            f"received {address!r}."
        )


# --- The strategy ------------------------------------------------------------------------


def create_multi_worker_strategy(fix_keras=True):
    """Creates the `MultiWorkerMirroredStrategy` of this process's `TF_CONFIG`.

    Call it first thing in the program, before any other TensorFlow op:
    building a model or a dataset, creating a tensor, even listing devices
    initialises TensorFlow, after which collective ops can no longer be set
    up. Then build and compile the model inside `strategy.scope()`.

    Args:
        fix_keras: bool, install `install_keras_fix` (it does nothing on a
            Keras version that does not need it). False only to reproduce
            the Keras bug.

    Returns:
        `tf.distribute.MultiWorkerMirroredStrategy`; without `TF_CONFIG` it
        runs on this machine's devices alone (a warning is logged).

    Raises:
        ValueError: a malformed `TF_CONFIG` (see `parse_tf_config`).
        RuntimeError: TensorFlow was initialised before the strategy was
            created (the message says what to move).
    """
    task = parse_tf_config()
    if task is None:
        logging.warning("TF_CONFIG is not set: MultiWorkerMirroredStrategy runs on this "
                        "machine alone.")
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "must be configured at program startup" not in str(e):
            raise
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before any other TensorFlow op, but "
            "TensorFlow is already initialised (a tensor, model, dataset or device listing came "
            "first). Call kbert.training.multi_worker.create_multi_worker_strategy() (or "
            "create_strategy('multi_worker')) at the start of the program and build everything "
            f"else after it. TensorFlow said: {e}"
        ) from e
    if fix_keras:
        install_keras_fix()
    return strategy


def barrier(strategy):
    """Blocks until every worker of `strategy` has called it; returns the number of replicas.

    An all-reduce of one number per replica, e.g. so that workers read a run
    folder only after the chief has written it. Call it on every worker the
    same number of times (like every collective).

    Args:
        strategy: a `tf.distribute.Strategy` (any kind; a single-replica one
            returns at once).
    """
    ones = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(1.0))
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy())


def shard_for_workers(dataset, files=None, num_workers=None):
    """Sets how `model.fit` under a multi-worker strategy splits `dataset` between workers.

    With `files` (the input files `dataset` reads, e.g. TFRecord shards via
    `tf.data.Dataset.list_files` + `interleave`), `AutoShardPolicy.FILE`:
    each worker reads its own files, nothing twice. Without, `DATA`: every
    worker runs the whole pipeline and keeps every `num_workers`-th batch
    slice, so for a dataset batched to the global batch size, step `t` of
    all workers together trains on exactly global batch `t` (each worker
    gets its `global_batch_size / num_replicas` slice of it).

    Args:
        dataset: `tf.data.Dataset`, batched to the global batch size.
        files: optional list of the files `dataset` reads.
        num_workers: optional int, the cluster's workers (see
            `WorkerTask.num_workers`), to check there are enough files.

    Returns:
        `dataset` with `tf.data.Options.experimental_distribute.auto_shard_policy` set.

    Raises:
        ValueError: fewer `files` than `num_workers` (FILE sharding would
            leave a worker without data; pass no `files` for DATA sharding,
            or write more shards).
    """
    if files is not None and num_workers is not None and len(files) < num_workers:
        raise ValueError(
            f"{len(files)} input file(s) cannot be split by file between {num_workers} workers; "
            "write at least one file per worker or shard by data (files=None)."
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE
        if files is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


# --- Checkpoints -------------------------------------------------------------------------


def worker_directory(directory, task):
    """Where `task` writes what the chief writes to `directory`.

    The chief (or a run without `TF_CONFIG`, `task=None`) writes to
    `directory`; every other worker to `directory/workertemp_<index>`, a
    folder of its own that it deletes when done (TensorFlow's multi-worker
    guide). Use it for saved models too: every worker must call `save`.

    Args:
        directory: str, the run's output folder.
        task: `WorkerTask` or None.
    """
    if task is None or task.is_chief:
        return directory
    return os.path.join(directory, f"workertemp_{task.task_index}")


class WorkerCheckpoint(TrainingCheckpoint):
    """A `TrainingCheckpoint` for multi-worker runs: all workers save, the chief's files count.

    Every worker restores the chief's newest checkpoint in `directory` and
    saves into `worker_directory(directory, task)` (non-chief copies keep only
    the newest one; `remove_temporary` deletes them at the end). Use it with
    `CheckpointCallback` and `kbert.training.pretraining.fit_intervals`
    (one Keras epoch per checkpoint interval, the dataset started at the
    restored step), so a restarted job repeats at most one checkpoint
    interval.

    Args:
        model, optimizer: as for `TrainingCheckpoint`; create them in the
            strategy's scope.
        directory: str, the run's checkpoint folder, shared by all workers.
        task: `WorkerTask` (from `parse_tf_config`) or None (one worker).
        max_to_keep: int, checkpoints the chief keeps.
    """

    def __init__(self, model, optimizer, directory, task, max_to_keep=3):
        chief = task is None or task.is_chief
        super().__init__(model, optimizer, worker_directory(directory, task),
                         max_to_keep=max_to_keep if chief else 1)
        self.task = task
        self.chief_directory = directory

    def restore_or_initialize(self):
        """Restores the chief's newest checkpoint, if any; returns its step (0 if none).

        Raises:
            AssertionError (from TensorFlow): the checkpoint does not match the model.
        """
        if self.directory == self.chief_directory:
            return super().restore_or_initialize()
        own = self.manager
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.chief_directory,
                                                  max_to_keep=None)
        try:
            return super().restore_or_initialize()
        finally:
            self.manager = own

    def remove_temporary(self):
        """Deletes a non-chief worker's temporary checkpoint folder (call after the last save)."""
        if self.directory != self.chief_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
