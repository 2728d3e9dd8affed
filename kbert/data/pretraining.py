"""BERT pretraining data: NSP sentence pairs, packing and dynamic MLM masking.

Follows Devlin et al. 2019, section 3.1 and Appendix A.1, and
google-research/bert `create_pretraining_data.py`: sentence pairs where B is
the true continuation of A or (50%) a random span from another document;
15% of the non-special tokens are chosen for prediction, of which 80% become
`[MASK]`, 10% a random token and 10% stay unchanged. Masking runs inside
`tf.data` with tensorflow-text (`mask_language_model`), so every epoch sees
new masks ("dynamic masking", Liu et al. 2019, RoBERTa section 4.1). Whole-word
masking (google-research/bert, 2019-05-31 release) is an option of the masker
(`MaskedLMMasker`, in `kbert.data.masking`).
"""

import dataclasses
import itertools

import numpy as np
import tensorflow as tf

from kbert.data.corpus import merge_short_documents, read_documents
from kbert.data.masking import (  # noqa: F401  (re-exported: part of this module's API)
    MaskedLMMasker,
    word_continuation_ids,
)
from kbert.text.bert_packer import BertPacker

FEATURE_NAMES = (
    "token_ids",
    "segment_ids",
    "padding_mask",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


@dataclasses.dataclass
class PretrainingDataConfig:
    """How pretraining examples are built.

    Attributes:
        sequence_length: int, tokens per packed example (with [CLS]/[SEP]).
        max_predictions_per_seq: int, slots for masked positions per example.
        masked_lm_prob: float, share of non-special tokens chosen (BERT: 0.15).
        mask_token_rate: float, share of chosen tokens set to [MASK] (0.8).
        random_token_rate: float, share set to a random id (0.1); the rest
            (0.1) keep the original token.
        next_sentence_prob: float, probability that B is random (0.5).
        short_seq_prob: float, probability of a shorter target length (0.1).
        dupe_factor: int, passes over the corpus with different pairings.
        seed: int, makes pairing, shuffling and masking reproducible.
    """

    sequence_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    next_sentence_prob: float = 0.5
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    seed: int = 12345

    def __post_init__(self):
        if self.sequence_length < 8:
            raise ValueError(f"sequence_length={self.sequence_length} must be >= 8.")
        if not 0 < self.max_predictions_per_seq <= self.sequence_length - 3:
            raise ValueError(
                f"max_predictions_per_seq={self.max_predictions_per_seq} must be in "
                f"[1, sequence_length - 3 = {self.sequence_length - 3}]."
            )
        for name in ("masked_lm_prob", "next_sentence_prob", "short_seq_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1].")
        if self.mask_token_rate + self.random_token_rate > 1.0:
            raise ValueError(
                f"mask_token_rate + random_token_rate = "
                f"{self.mask_token_rate + self.random_token_rate} exceeds 1."
            )


def tokenize_documents(documents, tokenizer, batch_size=4096):
    """Tokenizes documents of sentences with a `kbert.text.BertTokenizer`.

    Returns:
        list of documents, each a list of sentences as Python lists of int ids;
        sentences with no tokens are dropped, and so are empty documents.
    """
    flat = [sentence for document in documents for sentence in document]
    ids = []
    for start in range(0, len(flat), batch_size):
        batch = tf.constant(flat[start : start + batch_size], tf.string)
        ids.extend(tokenizer(batch).to_list())
    out, offset = [], 0
    for document in documents:
        sentences = [s for s in ids[offset : offset + len(document)] if s]
        offset += len(document)
        if sentences:
            out.append(sentences)
    return out


def create_sentence_pairs(documents, config, rng):
    """Builds NSP pairs from tokenized documents.

    For each document, consecutive sentences are gathered into a chunk of up
    to `sequence_length - 3` tokens (sometimes shorter, `short_seq_prob`); A
    is the first part of the chunk; with probability `next_sentence_prob` B
    is a span from a random other document (label 1, NotNext), otherwise the
    rest of the chunk (label 0, IsNext). As in google-research/bert, the
    unused sentences of a NotNext chunk are put back for the next chunk.

    Args:
        documents: list of documents of sentences of int ids (see
            `tokenize_documents`); needs at least 2 documents.
        config: `PretrainingDataConfig`.
        rng: `numpy.random.Generator`.

    Returns:
        (tokens_a, tokens_b, labels): two lists of lists of int and a list of
        int (0 IsNext, 1 NotNext). Segments are not yet truncated.

    Raises:
        ValueError: fewer than two documents.
    """
    if len(documents) < 2:
        raise ValueError(
            f"Next-sentence pairs need at least 2 documents; the corpus has {len(documents)}. "
            "Separate documents with blank lines."
        )
    max_tokens = config.sequence_length - 3
    tokens_a, tokens_b, labels = [], [], []
    for _ in range(config.dupe_factor):
        for doc_index, document in enumerate(documents):
            target = max_tokens
            if rng.random() < config.short_seq_prob:
                target = int(rng.integers(2, max_tokens + 1))
            chunk, length, i = [], 0, 0
            while i < len(document):
                chunk.append(document[i])
                length += len(document[i])
                if i == len(document) - 1 or length >= target:
                    is_random = rng.random() < config.next_sentence_prob
                    if not is_random and len(chunk) == 1:
                        if i + 1 < len(document):
                            i += 1
                            chunk.append(document[i])
                        else:
                            is_random = True
                    a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
                    a = [t for sentence in chunk[:a_end] for t in sentence]
                    if is_random:
                        other = int(rng.integers(0, len(documents) - 1))
                        other += other >= doc_index
                        other_doc = documents[other]
                        start = int(rng.integers(0, len(other_doc)))
                        b = []
                        for sentence in other_doc[start:]:
                            b.extend(sentence)
                            if len(b) >= max(1, target - len(a)):
                                break
                        i -= len(chunk) - a_end
                    else:
                        b = [t for sentence in chunk[a_end:] for t in sentence]
                    tokens_a.append(a)
                    tokens_b.append(b)
                    labels.append(int(is_random))
                    chunk, length = [], 0
                i += 1
    return tokens_a, tokens_b, labels


def pack_and_mask_batches(batches, packer, masker, start=0):
    """Packs and masks batches of sentence pairs, each batch keyed by its position.

    Args:
        batches: `tf.data.Dataset` of `(tokens_a, tokens_b, labels)` batches:
            ragged int32 `(batch_size, None)` twice and int32 `(batch_size,)`.
        packer: `kbert.text.BertPacker`.
        masker: `MaskedLMMasker`; batch i of the stream is masked with
            `batch_index = start + i`, so masks depend only on
            `masker.config.seed` and the position in the stream.
        start: int, position of the first batch.

    Returns:
        `tf.data.Dataset` of feature dicts (`FEATURE_NAMES`).
    """
    seed = masker.config.seed

    def pack_and_mask(batch_index, elements):
        a, b, label = elements
        # Seeds this function's graph (not the global seed): with the
        # stateless selection keyed by `batch_index`, masks depend only on
        # `config.seed` and the position in the stream.
        tf.random.set_seed(seed)
        features = masker(packer([a, b]), batch_index)
        features["next_sentence_labels"] = label
        return features

    return batches.enumerate(start).map(pack_and_mask, num_parallel_calls=None)


def build_pretraining_dataset(
    file_patterns,
    tokenizer,
    config,
    batch_size,
    repeat=True,
    shuffle=True,
    skip_batches=0,
    input_context=None,
    whole_word_mask=False,
):
    """Plain-text files -> batched BERT pretraining features for `model.fit`.

    Steps: `read_documents` -> `tokenize_documents` -> `create_sentence_pairs`
    (Python, seeded, once) -> `tf.data`: shuffle (seeded) -> repeat -> batch ->
    pack with `BertPacker` (round-robin truncation) -> `MaskedLMMasker`
    (seeded, so two pipelines built with the same arguments yield the same
    batches).

    Args:
        file_patterns: str or list of str, corpus files or globs (see
            `kbert.data.read_documents` for the format).
        tokenizer: `kbert.text.BertTokenizer`.
        config: `PretrainingDataConfig`.
        batch_size: int, examples per batch (the global batch under a
            `tf.distribute` strategy when the dataset is passed to `fit`).
        repeat: bool, cycle forever (training) or one pass (evaluation).
        shuffle: bool, shuffle examples (seeded by `config.seed`).
        skip_batches: int, batches to skip, to resume mid-run at the same
            place in the data stream.
        input_context: optional `tf.distribute.InputContext`; shards the
            examples by input pipeline and sets the per-replica batch size.
        whole_word_mask: bool, mask whole words (see `MaskedLMMasker`).

    Returns:
        `tf.data.Dataset` of dicts of `FEATURE_NAMES`, each `(batch_size, ...)`:
        int32 `token_ids`, `segment_ids`, `padding_mask` of
        `sequence_length`; int32 `masked_lm_positions`, `masked_lm_ids` and
        float32 `masked_lm_weights` of `max_predictions_per_seq`; int32
        `next_sentence_labels` of shape `(batch_size,)`.

    Raises:
        FileNotFoundError, ValueError: see `read_documents` and
            `create_sentence_pairs`; ValueError if `batch_size < 1`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    documents = merge_short_documents(read_documents(file_patterns))
    documents = tokenize_documents(documents, tokenizer)
    rng = np.random.default_rng(config.seed)
    tokens_a, tokens_b, labels = create_sentence_pairs(documents, config, rng)
    special = tokenizer.special_token_ids
    packer = BertPacker(
        config.sequence_length, special["cls"], special["sep"], special["pad"]
    )
    masker = MaskedLMMasker.from_tokenizer(config, tokenizer, whole_word_mask)
    dataset = tf.data.Dataset.from_tensor_slices(
        (ragged_rows(tokens_a), ragged_rows(tokens_b), tf.constant(labels, tf.int32))
    )
    if input_context is not None:
        dataset = dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=repeat)

    dataset = pack_and_mask_batches(dataset, packer, masker)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset.prefetch(tf.data.AUTOTUNE)


def ragged_rows(rows):
    """Lists of int -> an int32 `tf.RaggedTensor` `(len(rows), None)` (int64 row splits).

    What `tf.ragged.constant(rows, tf.int32, ragged_rank=1)` gives, built from
    one NumPy array: about 100x faster (tf.ragged.constant walks every
    element in Python; minutes for a 10 MB corpus).
    """
    lengths = np.fromiter((len(row) for row in rows), np.int64, len(rows))
    values = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(lengths.sum()))
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def split_features_for_fit(features):
    """Splits a feature dict into `(x, y, sample_weight)` for `BertPretrainer.fit`.

    x: `token_ids`, `segment_ids`, `padding_mask`, `masked_lm_positions`;
    y: `{"masked_lm_logits": masked_lm_ids, "next_sentence_logits":
    next_sentence_labels}`; sample_weight: `{"masked_lm_logits":
    masked_lm_weights}` (padding slots weigh 0).
    """
    x = {
        name: features[name]
        for name in ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions")
    }
    y = {
        "masked_lm_logits": features["masked_lm_ids"],
        "next_sentence_logits": features["next_sentence_labels"],
    }
    sample_weight = {
        "masked_lm_logits": features["masked_lm_weights"],
        "next_sentence_logits": tf.ones_like(
            features["next_sentence_labels"], dtype=tf.float32
        ),
    }
    return x, y, sample_weight
