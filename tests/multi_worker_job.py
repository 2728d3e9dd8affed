"""One worker of a multi-worker training job, for tests/test_multi_worker.py.

Run as `python -m tests.multi_worker_job --out_dir=DIR ...` with `TF_CONFIG`
set (one process per worker), or call `train` in-process with the default
strategy for the single-process reference. Every worker trains tiny kbert
models (a `BertPretrainer` with `compile_pretrainer`, without and with gradient
accumulation, and a `BertClassifier` with `compile_for_task`) on fixed global
batches of dict inputs with `model.fit`, resumably (`WorkerCheckpoint` + `CheckpointCallback` + `fit_intervals`), and
writes into `--out_dir`:

* `<model>_worker<i>.steps`: one line `step loss` per trained batch, appended
  (a restarted worker adds its steps), the loss of that batch alone; `step`
  is the optimizer's update count (it repeats under accumulation);
* `<model>_worker<i>.npz`: the final weights;
* `keras_bug_worker<i>.json` (with `--check_keras_bug`): what Keras did
  without kbert's fix (see `check_keras_bug`);
* `records_worker<i>.json` (with `--record_files`): the records this worker
  read from kbert's TFRecord pipeline (see `read_records`).
"""

import argparse
import json
import os
import signal
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

VOCAB_SIZE = 50
SEQUENCE_LENGTH = 12
NUM_PREDICTIONS = 4
GLOBAL_BATCH_SIZE = 8
NUM_CLASSES = 3
# "accumulating": the pretrainer with gradient accumulation over ACCUMULATION micro-batches
# (each a global batch), one update per ACCUMULATION batches.
MODELS = ("pretrainer", "classifier", "accumulating")
ACCUMULATION = 2


def tiny_config():
    """Keyword arguments of a tiny `BertEncoder` (hidden 16, 1 layer, no dropout)."""
    return {"vocab_size": VOCAB_SIZE, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": SEQUENCE_LENGTH, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def global_batches(kind, steps, seed=0):
    """`steps` fixed global batches as one dict of arrays with `steps * GLOBAL_BATCH_SIZE` rows.

    The pretraining batches give examples different numbers of masked
    tokens (1 to `NUM_PREDICTIONS`), so replicas see different counts and
    the loss must be normalised by the global count.
    """
    rng = np.random.default_rng(seed)
    n = steps * GLOBAL_BATCH_SIZE
    features = {
        "token_ids": rng.integers(5, VOCAB_SIZE, (n, SEQUENCE_LENGTH)).astype("int32"),
        "segment_ids": np.repeat([[0] * 6 + [1] * 6], n, 0).astype("int32"),
        "padding_mask": (np.arange(SEQUENCE_LENGTH) < rng.integers(6, SEQUENCE_LENGTH + 1, (n, 1))
                         ).astype("int32"),
    }
    if kind == "classifier":
        features["label"] = rng.integers(0, NUM_CLASSES, n).astype("int32")
        return features
    count = rng.integers(1, NUM_PREDICTIONS + 1, (n, 1))
    features.update(
        masked_lm_positions=rng.integers(1, 6, (n, NUM_PREDICTIONS)).astype("int32"),
        masked_lm_ids=rng.integers(5, VOCAB_SIZE, (n, NUM_PREDICTIONS)).astype("int32"),
        masked_lm_weights=(np.arange(NUM_PREDICTIONS) < count).astype("float32"),
        next_sentence_labels=rng.integers(0, 2, n).astype("int32"),
    )
    return features


def dataset(kind, steps, first_step):
    """Global batches `first_step..steps-1` as a `(x, y, sample_weight)` dataset, sharded by data."""
    from kbert.data import split_features_for_fit
    from kbert.training.multi_worker import shard_for_workers

    data = tf.data.Dataset.from_tensor_slices(global_batches(kind, steps))
    data = data.batch(GLOBAL_BATCH_SIZE).skip(first_step)
    if kind == "classifier":
        data = data.map(lambda f: ({k: f[k] for k in ("token_ids", "segment_ids", "padding_mask")},
                                   f["label"]))
    else:
        data = data.map(split_features_for_fit)
    return shard_for_workers(data)


def build_model(kind, steps, seed=1):
    """A compiled tiny model with fixed NumPy initial weights (call in the strategy's scope)."""
    from kbert.models import BertClassifier, BertEncoder, BertPretrainer
    from kbert.training import compile_for_task, compile_pretrainer, create_adamw

    encoder = BertEncoder(**tiny_config())
    if kind == "accumulating":
        optimizer = create_adamw(1e-2, steps // ACCUMULATION, warmup_steps=1,
                                 gradient_accumulation_steps=ACCUMULATION)
    else:
        optimizer = create_adamw(1e-2, steps, warmup_steps=2)
    if kind == "classifier":
        model = BertClassifier(encoder, num_classes=NUM_CLASSES, dropout=0.0)
        compile_for_task(model, "classification", optimizer)
    else:
        model = BertPretrainer(encoder)
        compile_pretrainer(model, optimizer)
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        value = rng.normal(0.0, 0.2, tuple(variable.shape))
        if variable.path.endswith("gamma"):
            value = 1.0 + 0.1 * value
        variable.assign(value.astype("float32"))
    return model, optimizer


class StepLog(keras.callbacks.Callback):
    """Appends `step loss` per trained step to `path`, flushed.

    `fit` logs the running mean of the epoch's losses; the step's own loss is
    `(b + 1) * mean_b - b * mean_(b-1)` for batch `b` of the epoch. With
    `die_at_step`, the process SIGKILLs itself right after logging that step.
    """

    def __init__(self, path, optimizer, die_at_step=None):
        super().__init__()
        self.path = path
        self.optimizer = optimizer
        self.die_at_step = die_at_step
        self.previous = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.previous = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        loss = (batch + 1) * mean - batch * self.previous
        self.previous = mean
        step = int(self.optimizer.iterations.numpy())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{step} {loss!r}\n")
        if step == self.die_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def train(kind, strategy, steps, out_dir, name, checkpoint_every, task=None, die_at_step=None,
          run_eagerly=False):
    """Trains model `kind` to `steps`, resuming from `out_dir/<kind>_ckpt`; returns the model.

    Args:
        kind: one of `MODELS`.
        strategy: the `tf.distribute` strategy.
        steps: int, the step to reach.
        out_dir: str, where the checkpoints, step log and weights go.
        name: str, this process's name in file names ("worker0", "single").
        checkpoint_every: int, steps per checkpoint (and per Keras epoch).
        task: `WorkerTask` or None.
        die_at_step: optional int, SIGKILL this process after that step.
        run_eagerly: bool, run `fit` without `tf.function` (the in-process
            reference: the same ops, without tracing's cost).
    """
    from kbert.training import CheckpointCallback
    from kbert.training.multi_worker import WorkerCheckpoint
    from kbert.training.pretraining import fit_intervals

    with strategy.scope():
        model, optimizer = build_model(kind, steps)
        model.run_eagerly = run_eagerly
        directory = os.path.join(out_dir, f"{kind}_ckpt" if task else f"{kind}_ckpt_{name}")
        checkpoint = WorkerCheckpoint(model, optimizer, directory, task)
        start = checkpoint.restore_or_initialize()
    callbacks = [CheckpointCallback(checkpoint, checkpoint_every),
                 StepLog(os.path.join(out_dir, f"{kind}_{name}.steps"), optimizer, die_at_step)]
    for first_step, initial_epoch, epochs, steps_per_epoch in fit_intervals(
        start, steps, checkpoint_every
    ):
        model.fit(dataset(kind, steps, first_step), initial_epoch=initial_epoch, epochs=epochs,
                  steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0)
    checkpoint.remove_temporary()
    np.savez(os.path.join(out_dir, f"{kind}_{name}.npz"), *model.get_weights())
    return model


def write_records(folder, num_files, records_per_file):
    """Writes BERT pretraining TFRecords whose first token id names the record.

    Record `r` of file `f` holds `input_ids[0] = 1000 * f + r` (the rest are
    valid features of `SEQUENCE_LENGTH` and `NUM_PREDICTIONS`). Returns the
    list of paths.
    """
    from kbert.data.tfrecord_writer import serialize_example

    paths = []
    for f in range(num_files):
        features = global_batches("pretrainer", 1, seed=f)
        features = {k: v[:1].repeat(records_per_file, 0) for k, v in features.items()}
        features["token_ids"][:, 0] = 1000 * f + np.arange(records_per_file)
        paths.append(os.path.join(folder, f"records-{f:02d}.tfrecord"))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for r in range(records_per_file):
                writer.write(serialize_example(features, r))
    return paths


def read_records(strategy, pattern, out_dir, name):
    """Reads `pattern` once through `pretraining_tfrecord_dataset` as `fit` would distribute it.

    The dataset is built for the cluster's workers (FILE sharding when there
    are enough files) and distributed with `strategy.experimental_distribute_dataset`,
    as Keras' `fit` does; the first token id of every record this worker's
    replica received is written to `records_<name>.json`, with the policy.
    """
    from kbert.data import pretraining_tfrecord_dataset

    dataset = pretraining_tfrecord_dataset(
        pattern, GLOBAL_BATCH_SIZE, SEQUENCE_LENGTH, NUM_PREDICTIONS, repeat=False,
        shuffle=False, num_workers=strategy.num_replicas_in_sync)
    policy = dataset.options().experimental_distribute.auto_shard_policy
    seen = []
    for batch in strategy.experimental_distribute_dataset(dataset):
        for local in strategy.experimental_local_results(batch["token_ids"]):
            seen.extend(int(i) for i in local.numpy()[:, 0])
    with open(os.path.join(out_dir, f"records_{name}.json"), "w", encoding="utf-8") as f:
        json.dump({"policy": policy.name, "first_token_ids": seen}, f)


def check_keras_bug(strategy, out_dir, name):
    """Meets both Keras bugs that `install_keras_fix` fixes on this worker, then installs the fix.

    1. `fit` of the classifier without the fix: it fails while building the
       model from the first (distributed) batch.
    2. Keras' `reduce_per_replica` of a step's logs (each replica logs its
       global replica id), in a `tf.function` as `fit`'s train function
       calls it: it fails without the fix; with it, it gives the mean over
       all workers' replicas.

    Writes `keras_bug_<name>.json`: `fit` and `reduce` (the errors), and
    `reduce_fixed` (the fixed mean). The errors are raised on every worker
    alike before any collective runs, so the workers stay in step.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from kbert.training import multi_worker

    def error(call):
        try:
            call()
        except Exception as e:  # noqa: BLE001 (recorded for the test to check)
            return f"{type(e).__name__}: {e}"[:2000]
        return None

    def replica_logs():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return {"loss": tf.cast(replica, tf.float32)}

    def step_logs():
        return tf_trainer.reduce_per_replica(strategy.run(replica_logs), strategy, "auto")

    multi_worker.uninstall_keras_fix()
    with strategy.scope():
        model, _ = build_model("classifier", 12)
    result = {"fit": error(lambda: model.fit(dataset("classifier", 1, 0), epochs=1, verbose=0)),
              "reduce": error(tf.function(step_logs))}
    multi_worker.install_keras_fix()
    result["reduce_fixed"] = float(tf.function(step_logs)()["loss"])
    with open(os.path.join(out_dir, f"keras_bug_{name}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--checkpoint_every", type=int, default=4)
    parser.add_argument("--die_at_step", type=int, default=None)
    parser.add_argument("--check_keras_bug", action="store_true")
    parser.add_argument("--record_files", default=None,
                        help="TFRecord glob to read once, as distributed (see read_records).")
    args = parser.parse_args()
    started = time.monotonic()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from kbert.training import multi_worker

    # First, before any other TF op; the Keras fix is installed after check_keras_bug.
    strategy = multi_worker.create_multi_worker_strategy(fix_keras=not args.check_keras_bug)
    task = multi_worker.parse_tf_config()
    name = f"worker{task.task_index}"
    assert multi_worker.barrier(strategy) == task.num_workers == strategy.num_replicas_in_sync
    print(f"{time.monotonic() - started:.1f} s ({time.process_time():.1f} s CPU): strategy created", flush=True)
    if args.check_keras_bug:
        check_keras_bug(strategy, args.out_dir, name)
        print(f"{time.monotonic() - started:.1f} s ({time.process_time():.1f} s CPU): Keras bug checked", flush=True)
    for kind in args.models.split(","):
        train(kind, strategy, args.steps, args.out_dir, name, args.checkpoint_every, task,
              args.die_at_step)
        print(f"{time.monotonic() - started:.1f} s ({time.process_time():.1f} s CPU): {kind} trained", flush=True)
    if args.record_files:
        read_records(strategy, args.record_files, args.out_dir, name)
        print(f"{time.monotonic() - started:.1f} s ({time.process_time():.1f} s CPU): records read", flush=True)


if __name__ == "__main__":
    main()
