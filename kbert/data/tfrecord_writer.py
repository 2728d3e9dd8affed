"""Writing BERT pretraining TFRecords from a text corpus, streamed (the writer side of
`kbert.data.tfrecords`).

The corpus is read as a stream of documents, a buffer of documents at a time
(`stream_documents`), cut into sentence pairs, packed and masked as
`kbert.data.pretraining` does for in-memory training, and written as
google-research/bert's `tf.train.Example` records (`RECORD_NAMES` in
`kbert.data.tfrecords`, which reads them back). Shard files get their final
names only when complete.
"""

import collections
import dataclasses
import itertools
import os
import time

import numpy as np
import tensorflow as tf

from kbert.data.corpus import corpus_files, parse_documents
from kbert.data.pretraining import (
    MaskedLMMasker,
    create_sentence_pairs,
    pack_and_mask_batches,
    tokenize_documents,
    word_continuation_ids,
)
from kbert.data.tfrecords import _FLOAT_FEATURES, RECORD_NAMES
from kbert.text.bert_packer import BertPacker

# --- reading a corpus as a stream ---------------------------------------------------------

def stream_documents(file_patterns, split_sentences=True, block_bytes=1 << 20):
    """Yields the documents of plain-text corpus files without reading a file whole.

    Same format and result as `kbert.data.read_documents` (blank lines
    between documents; with `split_sentences`, lines split at `.`, `!`, `?`):
    lines are gathered up to a blank line once `block_bytes` are held, and
    that block of whole documents is parsed by `kbert.data.corpus.parse_documents`.
    Memory: one block (about `block_bytes`, more only for a longer document).

    Args:
        file_patterns: str or list of str, file paths or glob patterns.
        split_sentences: bool, split lines into sentences.
        block_bytes: int, text gathered before a block is parsed.

    Yields:
        documents, each a non-empty list of non-empty str.

    Raises:
        FileNotFoundError, IsADirectoryError: see `kbert.data.corpus.corpus_files`.
        ValueError: bytes that are not UTF-8 (file, line and byte named), or
            no text in any file.
    """
    paths = corpus_files(file_patterns)
    found = False
    for path in paths:
        block, size = [], 0
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                line = _decode_line(raw, path, number)
                if size >= block_bytes and not line.strip():
                    for document in parse_documents("".join(block), split_sentences):
                        found = True
                        yield document
                    block, size = [], 0
                block.append(line)
                size += len(raw)
        for document in parse_documents("".join(block), split_sentences):
            found = True
            yield document
    if not found:
        raise ValueError(f"The corpus files {paths} hold no text.")


def _decode_line(raw, path, number):
    """One line of a corpus file as str (a leading byte-order mark dropped); errors name file:line."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
            "save the file as UTF-8."
        ) from None


def _merged_documents(documents, min_sentences=2):
    """`kbert.data.merge_short_documents` as a stream (holds one document back)."""
    held, current = None, []
    for document in documents:
        current.extend(document)
        if len(current) >= min_sentences:
            if held is not None:
                yield held
            held, current = current, []
    if held is None:
        if current:
            yield current
        return
    held.extend(current)
    yield held


def _batched(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _document_buffers(documents, size):
    """Consecutive buffers of `size` documents; the last holds 2 to `size + 1`.

    Raises:
        ValueError: fewer than 2 documents in all (next-sentence pairs need 2).
    """
    buffer = []
    for document in documents:
        buffer.append(document)
        if len(buffer) == size + 2:
            yield buffer[:size]
            buffer = buffer[size:]
    if len(buffer) < 2:
        raise ValueError(
            f"Next-sentence pairs need at least 2 documents; the corpus has {len(buffer)}. "
            "Separate documents with blank lines."
        )
    yield buffer


# --- writing ------------------------------------------------------------------------------

def shard_paths(output_path, num_shards):
    """Names of `num_shards` output files: `output_path` itself for 1, else
    `output_path-00000-of-0000N` (the TFRecord shard convention).

    Raises:
        ValueError: `num_shards` < 1.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1.")
    if num_shards == 1:
        return [output_path]
    return [f"{output_path}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def serialize_example(features, i):
    """Row `i` of a batch of NumPy features as a serialized BERT pretraining `tf.train.Example`.

    Args:
        features: dict of `FEATURE_NAMES` to NumPy arrays `(batch_size, ...)`
            (as `MaskedLMMasker` returns them, with `next_sentence_labels`).
        i: int, the row.

    Returns:
        bytes, with the record names of `RECORD_NAMES` (int64 lists, float
        `masked_lm_weights`, one-value `next_sentence_labels`).
    """
    feature = {}
    for name, record_name in RECORD_NAMES.items():
        values = np.reshape(features[name][i], [-1])
        if name in _FLOAT_FEATURES:
            feature[record_name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            feature[record_name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


WriteSummary = collections.namedtuple(
    "WriteSummary",
    ["files", "examples", "documents", "predictions", "masked_tokens", "random_next", "seconds"],
)
WriteSummary.__doc__ = """What `write_pretraining_tfrecords` wrote.

Fields: `files` (list of str), `examples` (int, over all dupe passes),
`documents` (int, per pass, after short documents were merged),
`predictions` (int, masked-LM slots with weight 1), `masked_tokens` (int,
real non-special tokens, the masking rate's denominator), `random_next`
(int, examples whose B is a random span), `seconds` (float).
"""


def write_pretraining_tfrecords(input_patterns, output_files, tokenizer, config,
                                whole_word_mask=False, buffer_documents=1000, batch_size=256):
    """Writes BERT pretraining TFRecords from plain-text files, streaming the corpus.

    For each of `config.dupe_factor` passes the corpus is read again as a
    stream (`stream_documents`, short documents merged as in
    `build_pretraining_dataset`), in buffers of `buffer_documents`
    documents: a buffer is tokenized (`tokenize_documents`), paired
    (`create_sentence_pairs`, one pass; a random next segment comes from
    another document of the same buffer), shuffled, packed (`BertPacker`)
    and masked once (`MaskedLMMasker`'s whole-word code, where for token
    masking every piece is its own word; seeded by `config.seed` and the
    batch's position), and written round-robin over `output_files` as
    google-research/bert's writer does. A row gets
    ceil(masked_lm_prob * its non-special tokens) predictions (at most
    `max_predictions_per_seq`); google-research/bert takes
    max(1, round(masked_lm_prob * all its tokens)), [CLS] and [SEP] included:
    the same 19 for a full row of 128 at 0.15.

    Held in memory at once: one buffer of tokenized documents and its
    sentence pairs, about 1 MiB of raw text and one batch of features, so
    memory depends on `buffer_documents`, not on the corpus size. What this
    gives up against google-research/bert (which holds the whole corpus): a
    NotNext segment comes from the same buffer, not the whole corpus, and
    examples are shuffled within a buffer, not globally (readers shuffle
    again: `pretraining_tfrecord_dataset` interleaves files and keeps a
    shuffle buffer).

    Files are written under temporary names and renamed at the end, so a
    failure leaves no partial output.

    Args:
        input_patterns: str or list of str, corpus files or globs (format of
            `kbert.data.read_documents`).
        output_files: list of str, the TFRecord files to write (see `shard_paths`).
        tokenizer: `kbert.text.BertTokenizer`.
        config: `PretrainingDataConfig` (`sequence_length` is the records'
            `max_seq_length`; `masked_lm_prob=0` writes unmasked records).
        whole_word_mask: bool, mask whole words.
        buffer_documents: int >= 2, documents per buffer.
        batch_size: int, examples packed and masked per call.

    Returns:
        `WriteSummary`.

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: see
            `stream_documents`; fewer than 2 documents; `buffer_documents` < 2;
            no `output_files`; an output folder that does not exist.
    """
    if buffer_documents < 2:
        raise ValueError(f"buffer_documents={buffer_documents} must be >= 2.")
    if not output_files:
        raise ValueError("output_files is empty; give at least one file to write.")
    for path in output_files:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"The folder of the output file {path} does not exist: {folder}.")
    corpus_files(input_patterns)  # a missing pattern fails before anything is written
    started = time.perf_counter()
    special = tokenizer.special_token_ids
    packer = BertPacker(config.sequence_length, special["cls"], special["sep"], special["pad"])
    # With no continuation ids every piece is its own word: token masking by
    # the same (faster) code as whole-word masking.
    continuation = word_continuation_ids(tokenizer.vocabulary) if whole_word_mask else []
    masker = MaskedLMMasker(config, tokenizer.vocab_size, special["mask"], special["cls"],
                            special["sep"], special["pad"], continuation_ids=continuation)
    counts, errors = collections.Counter(), []
    source = _sentence_pairs(input_patterns, tokenizer, config, buffer_documents, counts)
    first = next(source)  # a bad first buffer fails here, before the pipeline is traced
    pairs = tf.data.Dataset.from_generator(
        lambda: _kept_errors(itertools.chain([first], source), errors),
        output_signature=(
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    ).ragged_batch(batch_size)
    temporary = [f"{path}.tmp-{os.getpid()}" for path in output_files]
    writers = [tf.io.TFRecordWriter(path) for path in temporary]
    try:
        for features in pack_and_mask_batches(pairs, packer, masker):
            if errors:
                break
            features = {k: v.numpy() for k, v in features.items()}
            _count(counts, features, special)
            for i in range(len(features["next_sentence_labels"])):
                writers[counts["examples"] % len(writers)].write(serialize_example(features, i))
                counts["examples"] += 1
        if errors:  # raised as itself, not as the TF error from_generator would make of it
            raise errors[0]
        for writer in writers:
            writer.close()
        for path, final in zip(temporary, output_files):
            os.replace(path, final)
    finally:
        for writer, path in zip(writers, temporary):
            writer.close()
            if os.path.exists(path):
                os.remove(path)
    return WriteSummary(
        list(output_files), counts["examples"], counts["documents"], counts["predictions"],
        counts["masked_tokens"], counts["random_next"], time.perf_counter() - started,
    )


def _kept_errors(items, errors):
    """Yields from `items`; an exception ends the stream and is appended to `errors`."""
    try:
        yield from items
    except (OSError, ValueError) as e:
        errors.append(e)


def _sentence_pairs(input_patterns, tokenizer, config, buffer_documents, counts):
    """Yields `(tokens_a, tokens_b, label)` for every pass over the corpus, a buffer at a time.

    See `write_pretraining_tfrecords`; `counts["documents"]` ends as the
    documents of one pass.
    """
    pass_config = dataclasses.replace(config, dupe_factor=1)  # the passes are made here
    rng = np.random.default_rng(config.seed)
    for _ in range(config.dupe_factor):
        counts["documents"] = 0
        documents = _merged_documents(stream_documents(input_patterns))
        tokenized = (document for batch in _batched(documents, buffer_documents)
                     for document in tokenize_documents(batch, tokenizer))
        for buffer in _document_buffers(tokenized, buffer_documents):
            counts["documents"] += len(buffer)
            tokens_a, tokens_b, labels = create_sentence_pairs(buffer, pass_config, rng)
            for i in rng.permutation(len(labels)):
                yield tokens_a[i], tokens_b[i], labels[i]


def _count(counts, features, special):
    """Adds a batch's predictions, selectable tokens and random-next labels to `counts`."""
    original = features["token_ids"].copy()
    weights = features["masked_lm_weights"] > 0
    rows = np.nonzero(weights)[0]
    original[rows, features["masked_lm_positions"][weights]] = features["masked_lm_ids"][weights]
    selectable = (features["padding_mask"] > 0) & ~np.isin(
        original, [special["cls"], special["sep"], special["pad"]])
    counts["predictions"] += int(weights.sum())
    counts["masked_tokens"] += int(selectable.sum())
    counts["random_next"] += int(features["next_sentence_labels"].sum())


__all__ = [
    "WriteSummary",
    "serialize_example",
    "shard_paths",
    "stream_documents",
    "write_pretraining_tfrecords",
]
