"""One fine-tuning run in a run folder: train with per-epoch evaluation, keep the best, export.

What `trainers/finetune.py` does after it has parsed flags, built the task and
the compiled model and restored the newest checkpoint; callable from Python
with the same objects.

Multi-worker runs (`MultiWorkerMirroredStrategy`, `kbert.training.multi_worker`):
every worker calls `train_task` with its `WorkerTask`; only the chief writes
the run's files, and every worker evaluates (see `train_task`).
"""

import os
import time

import keras

from kbert.models.task_heads import inference_copy
from kbert.training import finetuning, multi_worker, runs
from kbert.training.checkpointing import CheckpointCallback
from kbert.training.guards import NonFiniteGuard


def train_task(task, model, checkpoint, model_dir, schedule, start_step=0,
               global_batch_size=32, checkpoint_every=500, verbose="auto", worker=None):
    """Trains `model` on `task` epoch by epoch, evaluating after each, and keeps the best epoch.

    Callbacks, in order: the task's evaluation (adds `val_<metric>` to the
    epoch's logs and appends to `MODEL_DIR/eval_history.json`), a
    `ModelCheckpoint` of the best epoch by `task.best_metric`
    (`best.weights.h5`, its threshold carried over from earlier runs), the
    resume checkpoint (every `checkpoint_every` steps and at each epoch end,
    after the evaluation), TensorBoard (`logs/`) and `history.csv`.
    Afterwards the best weights are loaded and a float32 copy without
    optimizer is saved as `MODEL_DIR/model.keras`.

    Multi-worker (`worker` given, `model` built and compiled in a
    `MultiWorkerMirroredStrategy` scope): each worker trains on its slice of
    every global batch (`multi_worker.shard_for_workers`: the batches of
    `task.epoch_dataset` are the global batches, as in a single-process
    run). Every worker evaluates the whole evaluation file after each epoch:
    the evaluation calls the model directly (`finetuning.predict_batches`),
    which reads this worker's copy of the weights and issues no collective,
    and the copies are equal, so all workers get the same numbers and none
    waits for another. Only the chief writes: `eval_history.json`,
    `best.weights.h5`, `logs/`, `history.csv` and `model.keras`; the other
    workers keep their resume checkpoints in `checkpoint`'s temporary
    folder and delete it when training ends or stops on a NaN/Inf loss.

    Args:
        task: a task from `kbert.training.tasks`.
        model: its compiled model (see `finetuning.compile_for_task`).
        checkpoint: the restored `TrainingCheckpoint` of `model`
            (`multi_worker.WorkerCheckpoint` when `worker` is given).
        model_dir: str, the run folder.
        schedule: list of steps per epoch (`finetuning.epoch_schedule`).
        start_step: int, the restored step.
        global_batch_size: int, for the sequences/s figure.
        checkpoint_every: int, steps between resume checkpoints.
        verbose: `model.fit` verbosity.
        worker: optional `multi_worker.WorkerTask` of this process (None: one
            process).

    Returns:
        (final_model, summary): the float32 best model (None on a non-chief
        worker) and a dict for `metrics.json` (best epoch and metrics, every
        epoch's evaluation, example counts, steps and sequences/s of this
        run; on a non-chief worker the epochs of this run only).

    Raises:
        kbert.training.NonFiniteLossError: a NaN/Inf loss (on every worker alike).
    """
    chief = worker is None or worker.is_chief
    history_path = os.path.join(model_dir, "eval_history.json")
    best_path = os.path.join(model_dir, "best.weights.h5")
    previous = [r[task.best_metric] for r in finetuning.read_json(history_path, [])
                if os.path.exists(best_path)]
    evaluation = finetuning.EvaluationCallback(task.evaluate, history_path if chief else None)
    callbacks = [
        NonFiniteGuard(check_weights_every=checkpoint_every),  # before anything saves weights
        evaluation,
    ]
    if chief:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            best_path, monitor=f"val_{task.best_metric}", mode="max", save_best_only=True,
            save_weights_only=True, initial_value_threshold=max(previous) if previous else None,
        ))
    # Every worker saves (a save may need a collective); WorkerCheckpoint picks the folder.
    callbacks.append(CheckpointCallback(checkpoint, checkpoint_every, save_at_epoch_end=True))
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(os.path.join(model_dir, "logs")),
            keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"), append=True),
        ]
    epoch_dataset = task.epoch_dataset
    if worker is not None:
        def epoch_dataset(epoch):
            return multi_worker.shard_for_workers(task.epoch_dataset(epoch))
    started = time.time()
    try:
        finetuning.fit_epochs(model, epoch_dataset, schedule, start_step, callbacks, verbose)
    finally:
        if worker is not None:
            checkpoint.remove_temporary()
    train_seconds = time.time() - started - evaluation.eval_seconds
    trained_steps = sum(schedule) - start_step

    final = None
    if chief:
        if os.path.exists(best_path):
            model.load_weights(best_path)
        records = finetuning.read_json(history_path, [])
        final = inference_copy(model)
        final.save(os.path.join(model_dir, "model.keras"))
    else:
        records = evaluation.records
    best = max(records, key=lambda r: r[task.best_metric]) if records else None
    summary = {
        "task": task.task,
        "best_epoch": best and best["epoch"],
        "best": best and {k: v for k, v in best.items() if k not in ("epoch", "step")},
        "epochs": records,
        "train_examples": task.num_train_examples,
        "trimmed_train_examples": task.num_truncated,
        "eval_examples": task.num_eval_examples,
        "steps_this_run": trained_steps,
        "train_seconds_this_run": round(train_seconds, 1),
    }
    if trained_steps:
        # Sequences = packed examples (SQuAD: windows), at most one pass per epoch.
        sequences = min(trained_steps * global_batch_size, task.num_train_sequences * len(schedule))
        summary["train_sequences_per_second"] = round(sequences / max(train_seconds, 1e-9), 1)
    return final, summary


def export_task(task, model, tokenizer, model_dir, sequence_length, tflite_recipes=None):
    """Exports `model` with `task.export` into `MODEL_DIR/export`, TensorFlow's logs in `export.log`.

    `tflite_recipes` (a list of `kbert.serving.TFLITE_RECIPES` names) is passed
    on to `task.export` unless it is None or just `["float32"]` (what every
    task writes anyway); only the classification task takes other recipes.

    Returns:
        dict from `task.export` (paths and verification reports).

    Raises:
        kbert.serving.ExportVerificationError: an artifact disagrees with `model`
            (the message names `export.log`).
    """
    from kbert.serving import ExportVerificationError

    export_dir = os.path.join(model_dir, "export")
    os.makedirs(export_dir, exist_ok=True)
    log = os.path.join(export_dir, "export.log")
    try:
        with runs.stderr_to_file(log):
            wanted = tflite_recipes and list(tflite_recipes) != ["float32"]
            extra = {"tflite_recipes": tflite_recipes} if wanted else {}
            return task.export(model, tokenizer, export_dir, sequence_length, **extra)
    except ExportVerificationError as e:
        raise ExportVerificationError(f"{e} (details in {log})") from e
