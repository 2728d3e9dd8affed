"""Fine-tuning with `model.fit`: task losses, per-epoch evaluation, resumable epochs.

The recipe of Devlin et al. 2019, section 4 and Appendix A.3 (google-research/bert
`run_classifier.py`/`run_squad.py`): AdamW with linear warmup and decay
(`create_adamw`), a few epochs, the task's standard metric on the evaluation
set after every epoch, and the best epoch kept.
"""

import json
import os
import time
import warnings

import keras
import numpy as np

from kbert.data.tagging import IGNORE_LABEL
from kbert.metrics.accuracy import SparseCategoricalAccuracy
from kbert.training.gradients import LossScaleOptimizer

TASKS = ("classification", "regression", "tagging", "squad")

# The metric each task's best checkpoint is chosen by (higher is better).
BEST_METRIC = {
    "classification": "accuracy",
    "regression": "pearson_spearman",
    "tagging": "accuracy",
    "squad": "f1",
}


def compile_for_task(model, task, optimizer, jit_compile=False, steps_per_execution=1):
    """Compiles a task model with its loss and training metric. Call inside the strategy scope.

    Losses (from logits, float32):
      * classification: sparse categorical cross-entropy; metric `accuracy`.
      * regression: mean squared error on the `(batch, 1)` score.
      * tagging: sparse categorical cross-entropy averaged over the word
        pieces whose label is not `IGNORE_LABEL` (Keras' `ignore_class`);
        metric `accuracy` over the same pieces (= word accuracy, since each
        word is labelled on its first piece only).
      * squad: the mean of start and end cross-entropies (`run_squad.py`);
        labels are a dict with `start_logits` and `end_logits` keys holding
        the gold positions.

    Args:
        model: `BertClassifier` (classification, regression),
            `BertTokenClassifier` (tagging) or `BertSpanLabeler` (squad).
        task: one of `TASKS`.
        optimizer: a Keras optimizer (see `create_adamw`).
        jit_compile: bool, XLA-compile the train step.
        steps_per_execution: int, train steps per `tf.function` call.

    Raises:
        ValueError: unknown task.
    """
    if task == "classification":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [SparseCategoricalAccuracy(name="accuracy")]
        loss_weights = None
    elif task == "regression":
        loss = keras.losses.MeanSquaredError()
        metrics = None
        loss_weights = None
    elif task == "tagging":
        from kbert.metrics.tagging import MaskedSparseCategoricalAccuracy

        _ignore_unused_pooler()
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=IGNORE_LABEL
        )
        metrics = [MaskedSparseCategoricalAccuracy(ignore_label=IGNORE_LABEL, name="accuracy")]
        loss_weights = None
    elif task == "squad":
        _ignore_unused_pooler()
        loss = {
            name: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            for name in ("start_logits", "end_logits")
        }
        metrics = None
        loss_weights = {"start_logits": 0.5, "end_logits": 0.5}
    else:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}.")
    if model.dtype_policy.name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        # Dynamic loss scaling with the overflow check over all replicas (see gradients.py).
        optimizer = LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        loss_weights=loss_weights,
        metrics=metrics,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def _ignore_unused_pooler():
    """Tagging and QA heads read `sequence_output`: the encoder's pooler gets no gradient.

    That is expected (BERT's pooler serves sentence-level heads only), so
    Keras' warning about it is silenced; any other variable without a
    gradient is still reported.
    """
    warnings.filterwarnings(
        "ignore", message=r"Gradients do not exist for variables \['pooler/kernel', 'pooler/bias'\]"
    )


def predict_batches(model, dataset):
    """Runs `model` (inference mode) on every batch of `dataset`; returns a list of outputs.

    Unlike `model.predict`, batches of different lengths are not
    concatenated, so each keeps its own padding.

    Args:
        model: a Keras model.
        dataset: batches of input dicts, or of `(inputs, labels)` pairs.

    Returns:
        list (one entry per batch) of NumPy arrays or dicts of them.
    """
    outputs = []
    for batch in dataset:
        inputs = batch[0] if isinstance(batch, tuple) else batch
        result = model(inputs, training=False)
        outputs.append(keras.tree.map_structure(keras.ops.convert_to_numpy, result))
    return outputs


class EvaluationCallback(keras.callbacks.Callback):
    """Runs a task evaluation at the end of every epoch and puts it into the epoch's logs.

    The results are added to `logs` as `val_<name>`, so callbacks after this
    one in the list (`ModelCheckpoint` choosing the best epoch, `CSVLogger`,
    `TensorBoard`) and the progress bar see them.

    Args:
        evaluate: callable `model -> dict[str, float]` (e.g. accuracy, F1).
        history_path: optional str, a JSON file that collects one record
            per epoch (`epoch`, `step` and the results), kept across resumed runs.

    Under `MultiWorkerMirroredStrategy` give every worker this callback
    (each gets the same results, see `kbert.training.finetune_run.train_task`)
    and only the chief a `history_path`.

    Attributes:
        eval_seconds: float, wall time spent evaluating (to separate it from
            training time).
        records: list of this object's epoch records (`epoch`, `step` and the
            results), the ones it added to `history_path`.
    """

    def __init__(self, evaluate, history_path=None):
        super().__init__()
        self.evaluate = evaluate
        self.history_path = history_path
        self.eval_seconds = 0.0
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        started = time.time()
        results = {k: float(v) for k, v in self.evaluate(self.model).items()}
        self.eval_seconds += time.time() - started
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in results.items()})
        step = int(self.model.optimizer.iterations.numpy())
        record = dict(epoch=epoch + 1, step=step, **results)
        self.records = [*(r for r in self.records if r["epoch"] != epoch + 1), record]
        if self.history_path:
            records = read_json(self.history_path, default=[])
            records = [r for r in records if r["epoch"] != epoch + 1]
            records.append(record)
            write_json(self.history_path, records)


def read_json(path, default=None):
    """Returns the JSON value in `path`, or `default` when the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def epoch_schedule(steps_per_epoch, num_epochs=None, train_steps=None):
    """Steps in each epoch: `num_epochs` full epochs, or `train_steps` in total.

    With `train_steps`, the last epoch is cut short where the total is reached
    (evaluation still runs after it).

    Returns:
        list of int, steps per epoch.

    Raises:
        ValueError: neither or both of `num_epochs`/`train_steps`, or values < 1.
    """
    if (num_epochs is None) == (train_steps is None):
        raise ValueError("Give exactly one of num_epochs and train_steps.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1.")
    if num_epochs is not None:
        if num_epochs < 1:
            raise ValueError(f"num_epochs={num_epochs} must be >= 1.")
        return [steps_per_epoch] * num_epochs
    if train_steps < 1:
        raise ValueError(f"train_steps={train_steps} must be >= 1.")
    full, rest = divmod(train_steps, steps_per_epoch)
    return [steps_per_epoch] * full + ([rest] if rest else [])


def fit_epochs(model, epoch_dataset, schedule, start_step=0, callbacks=None, verbose="auto"):
    """Trains epoch by epoch from `start_step`, resuming mid-epoch exactly.

    Each epoch is one `model.fit` call on that epoch's batches, so epoch
    boundaries (and evaluation) stay where an uninterrupted run has them: a
    run resumed at step s skips the first `s - (steps before its epoch)`
    batches of its epoch and trains the rest.

    Args:
        model: a compiled Keras model.
        epoch_dataset: callable `epoch -> tf.data.Dataset` of that epoch's
            batches, the same for the same epoch in every run.
        schedule: list of steps per epoch (see `epoch_schedule`).
        start_step: int, optimizer steps already taken (a restored checkpoint).
        callbacks: list of Keras callbacks.
        verbose: `model.fit`'s verbosity (1: progress bar, 2: one line per epoch).

    Returns:
        list of the `History.history` dicts of the epochs run.
    """
    histories = []
    done = 0
    callbacks = [*(callbacks or []), _StopAfterOneEpoch()]
    for epoch, steps in enumerate(schedule):
        if start_step >= done + steps:
            done += steps
            continue
        skip = max(0, start_step - done)
        dataset = epoch_dataset(epoch).skip(skip).take(steps - skip).repeat()
        history = model.fit(
            dataset,
            initial_epoch=epoch,
            epochs=len(schedule),  # for the progress display; one epoch runs per call
            steps_per_epoch=steps - skip,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
        histories.append(history.history)
        done += steps
    return histories


class _StopAfterOneEpoch(keras.callbacks.Callback):
    """Ends `fit` after its first epoch (so `fit_epochs` can show "Epoch e/E")."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def classification_evaluator(dataset, labels, num_classes):
    """Returns `model -> metrics` for a classifier on a fixed, unshuffled `dataset`.

    Args:
        dataset: batches of inputs in the order of `labels` (e.g.
            `kbert.data.text_dataset(..., shuffle=False)`).
        labels: int class ids (classification) or float scores (regression),
            `(num_examples,)`.
        num_classes: int, 1 for regression.

    Returns:
        callable giving `accuracy`, `matthews_correlation` (and `f1` for
        two classes), or `pearson`, `spearman`, `pearson_spearman` for regression.
    """
    from kbert.metrics import classification

    labels = np.asarray(labels)

    def evaluate(model):
        outputs = np.concatenate(predict_batches(model, dataset), axis=0)
        if num_classes == 1:
            return classification.regression_metrics(labels, outputs[:, 0])
        return classification.classification_metrics(
            labels, outputs.argmax(-1), num_classes
        )

    return evaluate
