"""Length-bucketed, padded-to-longest batches that are reproducible and resumable.

Fine-tuning examples vary a lot in length (SST-2 sentences average about 13
word pieces); padding every batch to `sequence_length` wastes most of the
compute. Batches here are padded to their longest example, and examples of
similar length are grouped: each epoch is a seeded permutation cut into
chunks of `chunk_batches` batches, each chunk is sorted by length and cut
into batches, and the batch order is shuffled (the "sortish" sampler of
fairseq and HuggingFace's `group_by_length`). Unlike
`tf.data.Dataset.bucket_by_sequence_length`, the whole plan is known up
front, so the number of steps per epoch is exact and a resumed run can skip
to the very batch it stopped at.
"""

import numpy as np
import tensorflow as tf


def plan_batches(lengths, batch_size, seed=0, epoch=0, shuffle=True, chunk_batches=50):
    """Returns one epoch's batches as a list of int64 index arrays.

    Args:
        lengths: 1-D int array, the length of each example (word pieces).
        batch_size: int >= 1, examples per batch (the last batch of a
            length group may be smaller; no example is dropped).
        seed, epoch: ints; the plan is a function of both, so epoch `e` of a
            resumed run gets the same batches as in an uninterrupted run.
        shuffle: bool; False keeps the file order (for evaluation), batches
            of consecutive examples.
        chunk_batches: int, batches per length-sorted chunk: larger groups
            lengths more tightly, smaller keeps batches more random.

    Raises:
        ValueError: no examples, or `batch_size` < 1.
    """
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("No examples to batch.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    n = len(lengths)
    if not shuffle:
        return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def batches_per_epoch(num_examples, batch_size, shuffle=True, chunk_batches=50):
    """The number of batches `plan_batches` makes of `num_examples` examples."""
    if not shuffle:
        return -(-num_examples // batch_size)
    chunk = batch_size * chunk_batches
    full, rest = divmod(num_examples, chunk)
    return full * chunk_batches + -(-rest // batch_size)


def padded_batches_dataset(features, batches, pad_values=None, labels=None):
    """A `tf.data.Dataset` yielding the given batches, each padded to its longest example.

    Args:
        features: dict name -> int `tf.RaggedTensor` `(num_examples, None)`
            (e.g. `token_ids`, `segment_ids`) or dense tensor
            `(num_examples, ...)`. A `padding_mask` (1 on real positions, 0
            on padding) is added from the first ragged feature.
        batches: list of int index arrays (see `plan_batches`).
        pad_values: dict name -> padding value for ragged features (default 0).
        labels: optional tensor `(num_examples, ...)`, ragged tensor, or dict of
            them; padded with `pad_values` under the same names (or
            `pad_values["labels"]` for a single tensor).

    Returns:
        Dataset of `features` dicts, or of `(features, labels)` when labels
        are given; int32 ids.
    """
    pad_values = dict(pad_values or {})
    sizes = [len(b) for b in batches]
    flat = np.concatenate(batches).astype(np.int64) if batches else np.zeros([0], np.int64)
    index = tf.RaggedTensor.from_row_lengths(flat, np.asarray(sizes, np.int64))
    first_ragged = next((k for k, v in features.items() if isinstance(v, tf.RaggedTensor)), None)

    def take(value, i, pad):
        value = tf.gather(value, i)
        if isinstance(value, tf.RaggedTensor):
            value = value.to_tensor(tf.cast(pad, value.dtype))
        return value

    def gather(i):
        out = {k: take(v, i, pad_values.get(k, 0)) for k, v in features.items()}
        if first_ragged is not None and "padding_mask" not in out:
            rows = tf.gather(features[first_ragged], i)
            out["padding_mask"] = tf.ones_like(rows, tf.int32).to_tensor(0)
        if labels is None:
            return out
        if isinstance(labels, dict):
            return out, {k: take(v, i, pad_values.get(k, 0)) for k, v in labels.items()}
        return out, take(labels, i, pad_values.get("labels", 0))

    dataset = tf.data.Dataset.from_tensor_slices(index)
    return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
