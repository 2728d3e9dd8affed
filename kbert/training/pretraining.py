"""Compiling and evaluating a `BertPretrainer`."""

import collections

import keras
import numpy as np

from kbert.training.losses import MaskedLMLoss


def compile_pretrainer(model, optimizer, jit_compile=False, steps_per_execution=1):
    """Compiles a `kbert.models.BertPretrainer` for `fit` with BERT's losses.

    Loss = `MaskedLMLoss` (global-batch token mean) + NSP sparse
    cross-entropy; metrics: masked-LM accuracy weighted by
    `masked_lm_weights`, NSP accuracy. Call inside the strategy scope.

    Args:
        model: `BertPretrainer`.
        optimizer: a Keras optimizer (see `create_adamw`).
        jit_compile: bool, XLA-compile the train step (off by default: it was
            slower on CPU and fails with MirroredStrategy over logical CPUs).
        steps_per_execution: int, train steps per `tf.function` call.
    """
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
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
            "next_sentence_logits": [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        },
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


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
