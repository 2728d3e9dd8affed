"""Compiling, initialising (BERT's phase 2), scheduling and evaluating a `BertPretrainer`,
and the summary of a run."""

import collections
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kbert.metrics.accuracy import SparseCategoricalAccuracy
from kbert.training.gradients import LossScaleOptimizer, accumulation_pending
from kbert.training.losses import MaskedLMLoss


def compile_pretrainer(model, optimizer, jit_compile=False, steps_per_execution=1):
    """Compiles a `kbert.models.BertPretrainer` for `fit` with BERT's losses.

    Loss = `MaskedLMLoss` (global-batch token mean) + NSP sparse
    cross-entropy; metrics: masked-LM accuracy weighted by
    `masked_lm_weights`, NSP accuracy. Under a `mixed_float16` model the
    optimizer is wrapped in kbert's `LossScaleOptimizer` (Keras' dynamic loss
    scaling, with the overflow check over all replicas); the inner optimizer
    clips and accumulates the unscaled gradient. Call inside the strategy
    scope.

    Args:
        model: `BertPretrainer`.
        optimizer: a Keras optimizer (see `create_optimizer`).
        jit_compile: bool, XLA-compile the train step (off by default: it was
            slower on CPU and fails with MirroredStrategy over logical CPUs).
            On TPU, also give static shapes (see `check_static_shapes`).
        steps_per_execution: int >= 1, train steps per `tf.function` call
            (callbacks then run once per call). Must be 1 under strategies
            whose updates go through `merge_call` (MirroredStrategy: Keras
            3.15's multi-step loop fails there, keras-team/keras#19246).

    Raises:
        ValueError: `steps_per_execution` > 1 under such a strategy.

    Returns:
        the optimizer `fit` uses (`model.optimizer`).
    """
    if steps_per_execution > 1 and not tf.__internal__.distribute.strategy_supports_no_merge_call():
        raise ValueError(
            f"steps_per_execution={steps_per_execution} fails under "
            f"{type(tf.distribute.get_strategy()).__name__} with Keras {keras.__version__} "
            "('You must feed a value for placeholder tensor ...', keras-team/keras#19246: the "
            "multi-step loop's cond around merge_call); use steps_per_execution=1 there."
        )
    if model.dtype_policy.name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        optimizer = LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss={
            "masked_lm_logits": MaskedLMLoss(),
            "next_sentence_logits": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
        },
        weighted_metrics={
            "masked_lm_logits": [
                SparseCategoricalAccuracy(name="accuracy")
            ],
            "next_sentence_logits": [
                SparseCategoricalAccuracy(name="accuracy")
            ],
        },
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model.optimizer


POSITIONS = "bert/embeddings/position_embeddings"


def init_from_checkpoint(model, source):
    """Loads a pretraining run's weights into `model` to continue with longer sequences.

    BERT's second phase (Devlin et al. 2019, Appendix A.2; NVIDIA's and
    google-research/bert's `init_checkpoint`): after most steps at sequence
    length 128, train at 512 starting from the phase-1 weights, with a new
    optimizer and schedule. Every weight is copied, strictly (a missing or
    misshapen one is named); the position table keeps its phase-1 rows, and
    if `model` has more positions than the source the extra rows keep their
    initial values (with BERT's 512-row table in both phases, all rows are
    copied: phase 1 trained rows 0..127, phase 2 trains the rest).

    Args:
        model: a `BertPretrainer` (the phase-2 model, built).
        source: the phase-1 run: its folder or `pretrainer.keras`, or a
            `TrainingCheckpoint` prefix (`<run>/ckpt-N`, with the run's
            `bert_config.json` beside it); or any checkpoint with pretraining
            heads that `kbert.checkpoints.load(..., pretraining=True)` reads
            (Google TF1, HuggingFace), to continue pretraining from it.

    Returns:
        the source's `BertConfig`.

    Raises:
        ValueError: the source has more positions than `model` (both named).
        kbert.checkpoints.CheckpointMismatchError: other weights that do not
            match (all named), or a source without pretraining heads.
        FileNotFoundError: no checkpoint at `source`.
    """
    from kbert.checkpoints import canonical, read_canonical

    if tf.io.gfile.exists(f"{source}.index"):
        weights, config = _read_training_checkpoint(source)
    else:
        weights, config = read_canonical(source, pretraining=True)
    rows = model.encoder.bert_config.max_position_embeddings
    if POSITIONS in weights and len(weights[POSITIONS]) != rows:
        source_rows = len(weights[POSITIONS])
        if source_rows > rows:
            raise ValueError(
                f"{source} has {source_rows} position embeddings but the model only "
                f"max_position_embeddings={rows}; give the model at least {source_rows}."
            )
        table = np.array(model.encoder.embeddings.position_embedding.embeddings.numpy())
        table[:source_rows] = weights[POSITIONS]
        weights = {**weights, POSITIONS: table}
    canonical.assign_model(model, weights)
    return config


def _read_training_checkpoint(prefix):
    """Canonical weights and config of a `TrainingCheckpoint` (model only, no optimizer)."""
    from kbert.checkpoints import canonical
    from kbert.models import BertConfig, BertEncoder, BertPretrainer

    config_path = os.path.join(os.path.dirname(prefix), "bert_config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{prefix} is a training checkpoint but {config_path} is missing.")
    config = BertConfig.from_json_file(config_path)
    model = BertPretrainer(BertEncoder.from_bert_config(config))
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    status.assert_existing_objects_matched()
    return canonical.read_model(model), config


def evaluate_masked_lm(model, dataset, max_batches=None):
    """Masked-LM accuracy of `model` on `dataset`, and the majority baseline.

    Args:
        model: `BertPretrainer` (or any model with a `masked_lm_logits` output).
        dataset: batches of pretraining features (see
            `kbert.data.build_pretraining_dataset`, with `repeat=False`).
        max_batches: optional int, stop after this many batches.

    Returns:
        dict: `accuracy` (share of masked tokens whose argmax is the original
        id), `majority_token_id` and `majority_accuracy` (accuracy of always
        predicting the most frequent original id among the evaluated masked
        tokens), `num_predictions`.

    Raises:
        ValueError: the dataset holds no masked token.
    """
    correct = 0
    total = 0
    counts = collections.Counter()
    for i, features in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        inputs = {
            name: features[name]
            for name in ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")
        }
        logits = model(inputs, training=False)["masked_lm_logits"]
        predictions = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        labels = features["masked_lm_ids"].numpy()
        weights = features["masked_lm_weights"].numpy() > 0
        correct += int(np.sum((predictions == labels) & weights))
        total += int(weights.sum())
        counts.update(labels[weights].tolist())
    if total == 0:
        raise ValueError("The evaluation data holds no masked tokens.")
    majority_id, majority_count = counts.most_common(1)[0]
    return {
        "accuracy": correct / total,
        "majority_token_id": int(majority_id),
        "majority_accuracy": majority_count / total,
        "num_predictions": total,
    }


def fit_intervals(start_step, total_steps, every):
    """Plans `model.fit` calls from `start_step` to `total_steps`, one epoch per checkpoint interval.

    Interval boundaries are the multiples of `every` and `total_steps`, so a
    run resumed at any step (also after `every` or `total_steps` changed)
    continues on the same grid. Consecutive intervals of equal length share
    one `fit` call.

    Args:
        start_step: int >= 0, the step the run stands at.
        total_steps: int >= 0, the step to reach (nothing is planned when
            `start_step >= total_steps`).
        every: int >= 1, steps per checkpoint interval.

    Returns:
        list of `(first_step, initial_epoch, epochs, steps_per_epoch)`: call
        `fit(dataset starting at first_step, initial_epoch=initial_epoch,
        epochs=epochs, steps_per_epoch=steps_per_epoch)`; the epoch of an
        interval is `its first step // every`.

    Raises:
        ValueError: `every` < 1 or `start_step` < 0.
    """
    if every < 1:
        raise ValueError(f"every={every} must be >= 1.")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0.")
    calls = []
    step = start_step
    while step < total_steps:
        end = min((step // every + 1) * every, total_steps)
        length = end - step
        last = calls[-1] if calls else None
        if last and last[3] == length and last[2] == step // every:
            calls[-1] = (last[0], last[1], last[2] + 1, length)
        else:
            calls.append((step, step // every, step // every + 1, length))
        step = end
    return calls


EVAL_KEYS = ("accuracy", "majority_token_id", "majority_accuracy", "num_predictions")


class RunSummary(keras.callbacks.Callback):
    """Keeps `summary.json` describing a whole pretraining run, over all its sessions.

    Each session (one invocation of the program) is listed with its first
    and last step and its seconds; `train_seconds` is their sum, so a rerun
    never resets it. As a callback placed after the `CheckpointCallback` it
    rewrites the file after every checkpoint (`finished: false`), so a killed
    session's time up to its last checkpoint still counts; `write(finished=True)`
    records the end. Writes are atomic (a temporary file renamed).

    Args:
        path: str, the `summary.json` to keep (read first if it exists).
        optimizer: the run's optimizer (its `iterations` is the step).
        train_steps: int, the step the run is asked to reach.
        every_n_steps: int, the checkpoint interval.
        start_step: int, where this session starts (the restored step).

    Raises:
        ValueError: `path` exists but is not a JSON object (file named).
    """

    def __init__(self, path, optimizer, train_steps, every_n_steps, start_step):
        super().__init__()
        self.path = path
        self.optimizer = optimizer
        self.train_steps = train_steps
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.previous = {}
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self.previous = json.load(f)
            except ValueError as e:
                raise ValueError(f"{path}: not JSON ({e}); move it away to start a new summary.") from e
            if not isinstance(self.previous, dict):
                raise ValueError(f"{path} must hold a JSON object.")
        # Sessions that ended before this one started (a checkpoint at or before start_step).
        self.sessions = [s for s in self.previous.get("sessions", [])
                         if s.get("end_step", 0) <= start_step]
        self.started = time.time()

    def step(self):
        """The optimizer step now (an int)."""
        return int(self.optimizer.iterations.numpy())

    def write(self, finished=False, extra=None):
        """Writes the summary now and returns it.

        Args:
            finished: bool, the run's final models are saved.
            extra: optional dict added at the top level (e.g. evaluation metrics).

        Returns:
            dict: `finished`, `final_step` (the step reached), `train_steps`,
            `train_seconds` (all sessions), `sessions` (those that trained:
            `start_step`, `end_step`, `train_seconds`), and for this session
            `start_step`, `steps_this_session`, `train_seconds_this_session`;
            then `extra`.
        """
        step = self.step()
        seconds = round(time.time() - self.started, 1)
        sessions = list(self.sessions)
        if step > self.start_step:
            sessions.append({"start_step": self.start_step, "end_step": step,
                             "train_seconds": seconds})
        summary = {
            "finished": bool(finished),
            "final_step": step,
            "train_steps": self.train_steps,
            "train_seconds": round(sum(s["train_seconds"] for s in sessions), 1),
            "sessions": sessions,
            "start_step": self.start_step,
            "steps_this_session": step - self.start_step,
            "train_seconds_this_session": seconds if step > self.start_step else 0.0,
            **(extra or {}),
        }
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(temporary, self.path)
        return summary

    def on_train_batch_end(self, batch, logs=None):
        # Under gradient accumulation the step repeats for K micro-batches: write at its first.
        if self.step() % self.every_n_steps == 0 and not accumulation_pending(self.optimizer):
            self.write()

    def on_train_end(self, logs=None):
        self.write()
