"""Token classification (tagging) data: first-piece labels, batching, word predictions.

Words are labelled on their first word piece and every other piece carries
`ignore_label`, the "first sub-token" rule of Devlin et al. 2019, section
5.3 (BERT's NER setup); predictions are read back per word from the same
piece (`word_predictions`). `kbert.text.BertWordPacker` builds the same
inputs in the TensorFlow graph. The CoNLL-U / CoNLL-2003 readers live in
`kbert.data.conll` and are re-exported here.
"""

import dataclasses

import numpy as np
import tensorflow as tf

# Re-exported: `from kbert.data.tagging import read_conllu` keeps working.
from kbert.data.conll import TaggedSentence, _check_tag, read_conll, read_conllu  # noqa: F401

IGNORE_LABEL = -100
_TOKENIZE_BATCH = 8192  # words per tokenizer call


def _where(sentence, j):
    if sentence.lines:
        return f"{sentence.source.rsplit(':', 1)[0]}:{sentence.lines[j]}"
    return f"{sentence.source or 'sentence'}, word {j}"


def build_label_list(sentences):
    """Returns the sorted list of distinct tags in `sentences` (label id = index).

    Raises:
        ValueError: no tags at all.
    """
    labels = sorted({tag for sentence in sentences for tag in sentence.tags})
    if not labels:
        raise ValueError("No tags found: the sentences are empty.")
    return labels


@dataclasses.dataclass
class TaggingExamples:
    """Encoded sentences: unpadded int32 arrays, one per example.

    Attributes:
        token_ids, segment_ids, padding_mask, labels, word_ids: lists of
            int32 arrays `(length,)`, `[CLS] pieces [SEP]` (see
            `encode_tagged_sentences`).
        sentence_index: int array `(num_examples,)`, the sentence each
            example comes from (one example per sentence unless split).
        num_words: int array `(num_sentences,)`, words per sentence.
        num_words_kept: int array `(num_sentences,)`, words that have a
            labelled piece (the rest were truncated away).
        num_truncated_words: int, `sum(num_words - num_words_kept)`.
        pad_id, ignore_label: ints used when batching.
    """

    token_ids: list
    segment_ids: list
    padding_mask: list
    labels: list
    word_ids: list
    sentence_index: np.ndarray
    num_words: np.ndarray
    num_words_kept: np.ndarray
    num_truncated_words: int
    pad_id: int
    ignore_label: int

    def __len__(self):
        return len(self.token_ids)


def _word_pieces(words, tokenizer):
    """WordPiece ids of every word, in a few batched calls; empty words -> [UNK]."""
    ids, lengths = [], []
    for i in range(0, len(words), _TOKENIZE_BATCH):
        pieces = tokenizer(words[i:i + _TOKENIZE_BATCH])
        ids.append(pieces.flat_values.numpy())
        lengths.append(pieces.row_lengths().numpy())
    ids = np.concatenate(ids or [np.zeros(0, np.int32)]).astype(np.int32)
    lengths = np.concatenate(lengths or [np.zeros(0, np.int64)])
    empty = np.flatnonzero(lengths == 0)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.insert(ids, starts[empty], tokenizer.special_token_ids["unk"])
    lengths[empty] = 1
    return ids, lengths


def _split_points(word_lengths, budget):
    """Greedy split of a sentence into runs of whole words of <= budget pieces."""
    points, used = [0], 0
    for j, n in enumerate(word_lengths):
        if used and used + n > budget:
            points.append(j)
            used = 0
        used += n
    return points + [len(word_lengths)]


def encode_tagged_sentences(
    sentences, tokenizer, label_list, sequence_length, ignore_label=IGNORE_LABEL,
    long_sentences="truncate",
):
    """Tokenizes words into `[CLS] pieces [SEP]` with first-piece labels (Devlin et al. 2019, 5.3).

    Each word's pieces come from `tokenizer` (one batched call per 8,192
    words); a word the tokenizer maps to no piece at all (only control or
    format characters) becomes `[UNK]`, so every word keeps a prediction.
    The word's label id sits on its first piece; other pieces, `[CLS]` and
    `[SEP]` get `ignore_label`.

    Sentences over `sequence_length - 2` pieces are TRUNCATED by default
    (`long_sentences="truncate"`): words whose first piece is cut are counted
    in `num_truncated_words`/`num_words_kept` and `word_predictions` gives
    them -1, which the tagging metrics count as errors. `"split"` instead
    makes several examples of whole words (greedy; `sentence_index` names
    the sentence) so every word is predicted; `word_predictions` joins them.
    Only a single word longer than the budget loses its later pieces.

    Args:
        sentences: list of `TaggedSentence`.
        tokenizer: a `kbert.text.BertTokenizer`.
        label_list: list of str; a tag's label id is its index.
        sequence_length: int >= 3, the most pieces per example with
            `[CLS]`/`[SEP]`.
        ignore_label: int outside `[0, len(label_list))` (Keras'
            `SparseCategoricalCrossentropy(ignore_class=-100)` skips -100).
        long_sentences: "truncate" or "split".

    Returns:
        `TaggingExamples`: per example int32 `(length,)` arrays `token_ids`,
        `segment_ids` (all 0), `padding_mask` (all 1), `labels`, `word_ids`
        (word index in its sentence per piece, -1 for `[CLS]`/`[SEP]`).

    Raises:
        ValueError: `ignore_label` inside the label range, a bad
            `sequence_length` / `long_sentences`, duplicate labels, a
            sentence with more or fewer tags than words, or a tag not in
            `label_list` (naming file, line and tag).
    """
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 3:
        raise ValueError(f"sequence_length must be an int >= 3; got {sequence_length!r}.")
    if long_sentences not in ("truncate", "split"):
        raise ValueError(f"long_sentences must be 'truncate' or 'split'; got {long_sentences!r}.")
    if 0 <= ignore_label < len(label_list):
        raise ValueError(
            f"ignore_label={ignore_label} is a label id: it must lie outside "
            f"[0, {len(label_list)}) (e.g. -100)."
        )
    label_index = {tag: i for i, tag in enumerate(label_list)}
    if len(label_index) != len(label_list):
        raise ValueError(f"label_list has duplicate tags: {list(label_list)}.")
    special = tokenizer.special_token_ids
    cls, sep = np.int32(special["cls"]), np.int32(special["sep"])
    budget = sequence_length - 2
    flat_words = [word for sentence in sentences for word in sentence.words]
    piece_ids, word_lengths = _word_pieces(flat_words, tokenizer)
    piece_starts = np.concatenate([[0], np.cumsum(word_lengths)])
    out = {name: [] for name in ("token_ids", "segment_ids", "padding_mask", "labels", "word_ids")}
    sentence_index, num_words, num_kept = [], [], []
    first_word = 0
    for s, sentence in enumerate(sentences):
        n = len(sentence.words)
        if len(sentence.tags) != n:
            raise ValueError(f"{sentence.source or s}: {n} words but {len(sentence.tags)} tags.")
        label_ids = np.empty(n, np.int32)
        for j, tag in enumerate(sentence.tags):
            _check_tag(tag, label_index, _where(sentence, j))
            label_ids[j] = label_index[tag]
        lengths = word_lengths[first_word:first_word + n]
        points = [0, n] if long_sentences == "truncate" else _split_points(lengths, budget)
        kept = 0
        for a, b in zip(points[:-1], points[1:]):
            pieces = piece_ids[piece_starts[first_word + a]:piece_starts[first_word + b]][:budget]
            word_ids = np.repeat(np.arange(a, b, dtype=np.int32), lengths[a:b])[:budget]
            starts = np.concatenate([[0], np.cumsum(lengths[a:b])])[:-1]
            starts = starts[starts < budget]
            labels = np.full(len(pieces) + 2, ignore_label, np.int32)
            labels[starts + 1] = label_ids[a:a + len(starts)]
            kept += len(starts)
            out["token_ids"].append(np.concatenate([[cls], pieces, [sep]]).astype(np.int32))
            out["segment_ids"].append(np.zeros(len(pieces) + 2, np.int32))
            out["padding_mask"].append(np.ones(len(pieces) + 2, np.int32))
            out["labels"].append(labels)
            out["word_ids"].append(np.concatenate([[-1], word_ids, [-1]]).astype(np.int32))
            sentence_index.append(s)
        num_words.append(n)
        num_kept.append(kept)
        first_word += n
    num_words, num_kept = np.array(num_words, np.int64), np.array(num_kept, np.int64)
    return TaggingExamples(
        **out,
        sentence_index=np.array(sentence_index, np.int64),
        num_words=num_words,
        num_words_kept=num_kept,
        num_truncated_words=int((num_words - num_kept).sum()),
        pad_id=int(special["pad"]),
        ignore_label=int(ignore_label),
    )


def tagging_dataset(examples, batch_size, shuffle=False, seed=None, drop_remainder=False):
    """A `tf.data.Dataset` of `(features, labels)` batches padded to their longest example.

    Args:
        examples: `TaggingExamples` from `encode_tagged_sentences`.
        batch_size: int >= 1.
        shuffle: bool, shuffle all examples (reshuffled each epoch).
        seed: optional int, makes the shuffle order reproducible.
        drop_remainder: bool, drop a last smaller batch.

    Returns:
        Dataset of (`{token_ids, segment_ids, padding_mask}`, `labels`):
        int32 `(batch_size, longest_in_batch)`; padding is `pad_id`, 0, 0
        and `ignore_label` (labels).

    Raises:
        ValueError: no examples or `batch_size` < 1.
    """
    if len(examples) == 0:
        raise ValueError("No examples to batch.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")

    def ragged(arrays):
        return tf.RaggedTensor.from_row_lengths(
            np.concatenate(arrays), np.array([len(a) for a in arrays], np.int64)
        )

    names = ("token_ids", "segment_ids", "padding_mask")
    features = {name: ragged(getattr(examples, name)) for name in names}
    dataset = tf.data.Dataset.from_tensor_slices((features, ragged(examples.labels)))
    if shuffle:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    pad_values = {"token_ids": examples.pad_id, "segment_ids": 0, "padding_mask": 0}

    def pad(features, labels):  # ragged batch -> dense, padded to the longest row
        features = {k: v.to_tensor(default_value=pad_values[k]) for k, v in features.items()}
        return features, labels.to_tensor(default_value=examples.ignore_label)

    dataset = dataset.ragged_batch(batch_size, drop_remainder=drop_remainder)
    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def word_predictions(logits_or_ids, word_ids, num_words, sentence_index=None):
    """Reads predictions back per word, from each word's first piece (Devlin et al. 2019, 5.3).

    Args:
        logits_or_ids: per example, float logits `(length, num_classes)` or
            int label ids `(length,)`; a padded array `(num_examples,
            length[, num_classes])` or a list of arrays.
        word_ids: per example, int `(length',)` word index per piece, -1 for
            special tokens and padding (`TaggingExamples.word_ids`, or
            `BertWordPacker`'s padded `word_ids`).
        num_words: ints, words per sentence (`TaggingExamples.num_words`).
        sentence_index: optional ints, the sentence of each example (needed
            for `long_sentences="split"`); default example i = sentence i.

    Returns:
        list (one per sentence) of int32 arrays `(num_words,)` of label ids;
        -1 for words without a piece (truncated).

    Raises:
        ValueError: different numbers of examples, predictions shorter than
            the labelled pieces, or word ids beyond `num_words`.
    """
    if len(logits_or_ids) != len(word_ids):
        raise ValueError(
            f"{len(logits_or_ids)} predictions but {len(word_ids)} word_ids rows."
        )
    if sentence_index is None:
        sentence_index = range(len(word_ids))
    result = [np.full(int(n), -1, np.int32) for n in num_words]
    for i, (prediction, words) in enumerate(zip(logits_or_ids, word_ids)):
        prediction = np.asarray(prediction)
        if prediction.ndim == 2:
            prediction = prediction.argmax(-1)
        words = np.asarray(words)
        positions = np.flatnonzero(words >= 0)
        first = np.ones(len(positions), bool)
        first[1:] = words[positions[1:]] != words[positions[:-1]]
        positions = positions[first]
        if len(positions) and positions[-1] >= len(prediction):
            raise ValueError(
                f"Example {i}: {len(prediction)} predictions but a word starts at piece "
                f"{positions[-1]}."
            )
        target = result[sentence_index[i]]
        if len(positions) and words[positions].max() >= len(target):
            raise ValueError(
                f"Example {i}: word id {words[positions].max()} but its sentence has "
                f"{len(target)} words."
            )
        target[words[positions]] = prediction[positions]
    return result


def ids_to_tags(label_ids, label_list):
    """Maps per-sentence label ids to tags; -1 (no prediction) becomes None.

    The tagging metrics (`kbert.metrics.tagging`) count a None as an error
    (never equal to a true tag; outside any entity).
    """
    return [[label_list[i] if i >= 0 else None for i in sentence] for sentence in label_ids]
