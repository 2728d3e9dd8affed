"""BERT pretraining TFRecords: their features and an interleaved `tf.data` reader.

The records are those of google-research/bert and tf-models-official
`create_pretraining_data.py`: one `tf.train.Example` per sentence pair with
int64 `input_ids`, `input_mask`, `segment_ids` (padded to `max_seq_length`),
int64 `masked_lm_positions`, `masked_lm_ids` and float `masked_lm_weights`
(padded to `max_predictions_per_seq`) and int64 `next_sentence_labels`
(one value; 1 = B is a random span). tf-models' "v2" names `input_word_ids`
and `input_type_ids` are read too. Their reader
(`official.nlp.data.pretrain_dataloader.BertPretrainDataLoader`) reads what
`write_pretraining_tfrecords` writes, and `pretraining_tfrecord_dataset`
reads what theirs writes. The writer is `kbert.data.tfrecord_writer`.
"""

import hashlib
import os
import re

import tensorflow as tf
from google.protobuf import message as message_module

from kbert.data.pretraining import (
    MaskedLMMasker,
)

# kbert feature name -> record feature name (google-research/bert).
RECORD_NAMES = {
    "token_ids": "input_ids",
    "padding_mask": "input_mask",
    "segment_ids": "segment_ids",
    "masked_lm_positions": "masked_lm_positions",
    "masked_lm_ids": "masked_lm_ids",
    "masked_lm_weights": "masked_lm_weights",
    "next_sentence_labels": "next_sentence_labels",
}
# tf-models-official's `use_v2_feature_names=True` records.
V2_RECORD_NAMES = dict(RECORD_NAMES, token_ids="input_word_ids", segment_ids="input_type_ids")
_FLOAT_FEATURES = ("masked_lm_weights",)
_PREDICTION_FEATURES = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")




# --- reading ------------------------------------------------------------------------------

def tfrecord_files(file_patterns):
    """The files that TFRecord patterns name: each pattern's matches, sorted, in pattern order.

    Uses `tf.io.gfile.glob`, so `gs://` and other TensorFlow file systems work.

    Args:
        file_patterns: str or list of str, paths or glob patterns (a
            comma-separated str is split).

    Returns:
        list of str, without duplicates.

    Raises:
        FileNotFoundError: a pattern matches no file (the pattern named).
        IsADirectoryError: a pattern matches a folder.
    """
    if isinstance(file_patterns, (str, os.PathLike)):
        file_patterns = [p for p in os.fspath(file_patterns).split(",") if p]
    paths = []
    for pattern in file_patterns:
        pattern = os.fspath(pattern)
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"No TFRecord file matches {pattern!r}.")
        folders = [m for m in matched if tf.io.gfile.isdir(m)]
        if folders:
            raise IsADirectoryError(
                f"TFRecord pattern {pattern!r} matches the folder {folders[0]}; "
                "give files (e.g. 'folder/*.tfrecord')."
            )
        paths.extend(m for m in matched if m not in paths)
    return paths


def check_pretraining_records(files, sequence_length, max_predictions_per_seq, vocab_size=None,
                              compression_type=None):
    """Reads the first record of each file and checks it against the expected lengths.

    So a mismatch fails when a pipeline is built, naming the file, the
    feature and both lengths, not as a parse error in the middle of training.

    Args:
        files: list of str TFRecord paths (see `tfrecord_files`).
        sequence_length: int, expected `input_ids`/`input_mask`/`segment_ids` length.
        max_predictions_per_seq: int, expected `masked_lm_*` length.
        vocab_size: optional int; the first record's ids must be below it.
        compression_type: "" or "GZIP"; None: that of the first file.

    Returns:
        dict, the record names to read (`RECORD_NAMES` or `V2_RECORD_NAMES`).

    Raises:
        ValueError: a file that is not a TFRecord file (or not of
            `compression_type`), a record that is not a BERT pretraining
            `tf.train.Example` (missing features named), a feature of another
            length or kind, an id outside the vocabulary, or files that hold
            no records at all.
    """
    names, empty = None, 0
    if compression_type is None and files:
        compression_type = "GZIP" if _is_gzip(files[0]) else ""
    for path in files:
        record = _first_record(path, compression_type)
        if record is None:
            empty += 1
            continue
        try:
            example = tf.train.Example.FromString(record)
        except message_module.DecodeError as e:
            raise ValueError(f"{path}: the first record is not a tf.train.Example ({e}).") from None
        feature = example.features.feature
        names = V2_RECORD_NAMES if "input_word_ids" in feature else RECORD_NAMES
        missing = [n for n in names.values() if n not in feature]
        if missing:
            raise ValueError(
                f"{path}: the first record lacks {missing}; it has {sorted(feature)}. BERT "
                f"pretraining records need {sorted(RECORD_NAMES.values())} (see "
                "trainers/create_pretraining_data.py)."
            )
        for name, record_name in names.items():
            kind = "float_list" if name in _FLOAT_FEATURES else "int64_list"
            values = getattr(feature[record_name], kind).value
            if feature[record_name].WhichOneof("kind") != kind:
                raise ValueError(
                    f"{path}: feature {record_name} is a {feature[record_name].WhichOneof('kind')}"
                    f", expected a {kind}."
                )
            if name == "next_sentence_labels":
                expected, flag = 1, None
            elif name in _PREDICTION_FEATURES:
                expected, flag = max_predictions_per_seq, "max_predictions_per_seq"
            else:
                expected, flag = sequence_length, "sequence_length"
            if len(values) != expected:
                wanted = f"{flag} is {expected}" if flag else f"it must hold {expected} value"
                raise ValueError(
                    f"{path}: feature {record_name} has length {len(values)} in the first "
                    f"record, but {wanted}."
                )
        top = max(feature[names["token_ids"]].int64_list.value)
        if vocab_size is not None and top >= vocab_size:
            raise ValueError(
                f"{path}: the first record holds token id {top}, but the vocabulary has "
                f"{vocab_size} tokens (were the records written with another vocabulary?)."
            )
    if names is None:
        raise ValueError(f"The TFRecord files {files[:3]}{'...' if len(files) > 3 else ''} "
                         f"({len(files)}) hold no records.")
    return names


def _first_record(path, compression_type):
    """The first serialized record of a TFRecord file, or None if it has none.

    Raises:
        ValueError: not a TFRecord file (a gzip file without
            `compression_type="GZIP"` is named as such).
    """
    try:
        for record in tf.data.TFRecordDataset(path, compression_type=compression_type).take(1):
            return record.numpy()
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        gzip = _is_gzip(path)
        hint = ""
        if gzip != (compression_type == "GZIP"):
            hint = f" It is {'' if gzip else 'not '}gzip-compressed, unlike the first file."
        # "{{function_node ...}} corrupted record at 0 [Op:IteratorGetNext] ..." -> the middle.
        message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", (e.message or "").splitlines()[0])
        message = message or type(e).__name__
        raise ValueError(f"{path} is not a TFRecord file ({message}).{hint}") from None
    return None


def _is_gzip(path):
    """True when a file starts with gzip's magic bytes."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def unmask(features):
    """Puts the original ids back at the masked positions of a batch of features.

    Args:
        features: dict with int32 `token_ids` `(batch_size, sequence_length)`,
            `masked_lm_positions`, `masked_lm_ids`, float32 `masked_lm_weights`
            `(batch_size, max_predictions_per_seq)`.

    Returns:
        int32 `(batch_size, sequence_length)`, the unmasked `token_ids`
        (slots of weight 0 are ignored).
    """
    real = features["masked_lm_weights"] > 0
    rows = tf.cast(tf.where(real)[:, 0], tf.int32)
    positions = tf.boolean_mask(features["masked_lm_positions"], real)
    return tf.tensor_scatter_nd_update(
        features["token_ids"], tf.stack([rows, positions], axis=1),
        tf.boolean_mask(features["masked_lm_ids"], real),
    )


def pretraining_tfrecord_dataset(
    file_patterns,
    batch_size,
    sequence_length,
    max_predictions_per_seq,
    repeat=True,
    shuffle=True,
    shuffle_buffer_size=10_000,
    seed=12345,
    drop_remainder=None,
    skip_batches=0,
    input_context=None,
    masker=None,
    num_workers=1,
    cycle_length=None,
    vocab_size=None,
    compression_type=None,
):
    """BERT pretraining TFRecords -> batched kbert features for `model.fit`, streamed.

    Pipeline: file names (`tfrecord_files`) -> seeded file shuffle -> repeat
    -> `interleave` of `tf.data.TFRecordDataset` over `cycle_length` files
    (parallel, deterministic order) -> seeded shuffle buffer -> skip ->
    batch -> `tf.io.parse_example` -> kbert names (`input_ids` ->
    `token_ids`, `input_mask` -> `padding_mask`; int64 -> int32) -> optional
    re-masking. The result is what `build_pretraining_dataset` gives, so
    `.map(split_features_for_fit)` feeds `BertPretrainer.fit`. The first
    record of each file is read and checked when the pipeline is built
    (`check_pretraining_records`).

    Distribution: the dataset's auto-shard policy is FILE when there are at
    least max(2, `num_workers`) files (each worker of a
    MultiWorkerMirroredStrategy reads its own files) and DATA otherwise. With
    `input_context` (`strategy.distribute_datasets_from_function`) the
    files, or the records when there are fewer files than input pipelines,
    are sharded here, and `batch_size` becomes the per-replica batch.

    Resuming: the stream depends only on the files, `seed` and the batch
    size, so `skip_batches=n` continues where a run that made n steps
    stopped: it skips n * batch_size records (read, not parsed), or
    n * batch_size / workers of each worker's own files when they are
    sharded by file (tf.distribute gives every replica a share of each
    worker's batches), or n * batch_size / input pipelines with
    `input_context`. Exact when the batch size divides evenly (the trainer
    requires a multiple of the replicas).

    Args:
        file_patterns: str (comma-separated) or list of str, TFRecord files or globs.
        batch_size: int, examples per batch (global, see above).
        sequence_length: int, the records' `max_seq_length`.
        max_predictions_per_seq: int, the records' masked-LM slots.
        repeat: bool, cycle forever (training) or one pass (evaluation).
        shuffle: bool, shuffle files and records (seeded).
        shuffle_buffer_size: int, records in the shuffle buffer.
        seed: int, seeds both shuffles.
        drop_remainder: bool, static batch shapes (TPU); default `repeat`.
        skip_batches: int, batches to skip (resume).
        input_context: optional `tf.distribute.InputContext`.
        masker: optional `kbert.data.MaskedLMMasker` built for these lengths;
            given, every batch is unmasked (`unmask`) and masked again
            (dynamic masking; records written with `masked_lm_prob=0` are
            simply masked), keyed by `masker.config.seed` and a hash of the
            batch's records, so a reshuffled epoch gets new masks. A token
            masker runs through the stateless code of whole-word masking
            with every piece its own word (same distribution), so masks
            never depend on what came before in the stream.
        num_workers: int, workers that will shard this dataset (see above).
        cycle_length: int, files read at once (default min(files, 16)).
        vocab_size: optional int, checked against the first records' ids.
        compression_type: "" or "GZIP"; None (default): "GZIP" when the first
            file is gzip-compressed (google-research/bert's `--gzip_compress`).

    Returns:
        `tf.data.Dataset` of dicts of `FEATURE_NAMES`: int32 `token_ids`,
        `segment_ids`, `padding_mask` `(batch_size, sequence_length)`; int32
        `masked_lm_positions`, `masked_lm_ids`, float32 `masked_lm_weights`
        `(batch_size, max_predictions_per_seq)`; int32
        `next_sentence_labels` `(batch_size,)`.

    Raises:
        FileNotFoundError, IsADirectoryError: see `tfrecord_files`.
        ValueError: see `check_pretraining_records`; `batch_size` < 1;
            `skip_batches` < 0; a `masker` configured for other lengths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if skip_batches < 0:
        raise ValueError(f"skip_batches={skip_batches} must be >= 0.")
    if masker is not None and (
        masker.config.sequence_length != sequence_length
        or masker.config.max_predictions_per_seq != max_predictions_per_seq
    ):
        raise ValueError(
            f"The masker is configured for sequence_length={masker.config.sequence_length}, "
            f"max_predictions_per_seq={masker.config.max_predictions_per_seq}; the records "
            f"have {sequence_length}, {max_predictions_per_seq}."
        )
    files = tfrecord_files(file_patterns)
    if compression_type is None:
        compression_type = "GZIP" if _is_gzip(files[0]) else ""
    names = check_pretraining_records(
        files, sequence_length, max_predictions_per_seq, vocab_size, compression_type)
    if drop_remainder is None:
        drop_remainder = repeat

    by_file = len(files) >= max(2, num_workers)
    # Records each input pipeline reads per global batch: tf.distribute splits
    # a FILE-sharded worker's batches among all replicas (`rebatch`), so each
    # worker's stream advances by batch_size / workers per step.
    consumers = num_workers if by_file else 1
    global_batch_size = batch_size
    if masker is not None and not masker.whole_word_mask:
        # tensorflow-text's 80/10/10 draws are stateful (they depend on the
        # batches masked before); the whole-word code with every piece its own
        # word masks tokens alike, statelessly, so a resumed stream is exact.
        masker = MaskedLMMasker(masker.config, masker.vocab_size, masker.mask_id,
                                *masker.unselectable_ids, continuation_ids=[])
    dataset = tf.data.Dataset.from_tensor_slices(files)
    shard_records = False
    if input_context is not None:
        consumers = input_context.num_input_pipelines
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) >= pipelines:
            dataset = dataset.shard(pipelines, index)
        else:
            shard_records = pipelines > 1
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression_type),
        cycle_length=min(len(files), cycle_length or 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if skip_batches:
        dataset = dataset.skip(skip_batches * global_batch_size // consumers)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    spec = {}
    for name, record_name in names.items():
        length = max_predictions_per_seq if name in _PREDICTION_FEATURES else sequence_length
        length = 1 if name == "next_sentence_labels" else length
        dtype = tf.float32 if name in _FLOAT_FEATURES else tf.int64
        spec[record_name] = tf.io.FixedLenFeature([length], dtype)

    def parse(serialized):
        records = tf.io.parse_example(serialized, spec)
        features = {
            name: tf.cast(records[record_name],
                          tf.float32 if name in _FLOAT_FEATURES else tf.int32)
            for name, record_name in names.items()
        }
        features["next_sentence_labels"] = features["next_sentence_labels"][:, 0]
        if masker is None:
            return features
        packed = {name: features[name] for name in ("segment_ids", "padding_mask")}
        packed["token_ids"] = unmask(features)
        # The batch's records key its masks: a position counter (`enumerate`,
        # `scan`) would be a source that FILE auto-sharding refuses.
        key = tf.strings.to_hash_bucket_fast(tf.strings.reduce_join(serialized), 1 << 62)
        remasked = masker(packed, key)
        remasked["next_sentence_labels"] = features["next_sentence_labels"]
        return remasked

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if by_file
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def tfrecord_files_digest(files):
    """sha256 hex digest of the names and sizes of TFRecord files, in order.

    For resume checks of runs on data too large to hash: it changes when a
    file is added, dropped, renamed, reordered or changes size.
    """
    digest = hashlib.sha256()
    for path in files:
        name = path if "://" in path else os.path.abspath(path)
        digest.update(f"{name}\t{tf.io.gfile.stat(path).length}\n".encode())
    return digest.hexdigest()


__all__ = [
    "RECORD_NAMES",
    "V2_RECORD_NAMES",
    "check_pretraining_records",
    "pretraining_tfrecord_dataset",
    "tfrecord_files",
    "tfrecord_files_digest",
    "unmask",
]
