"""BERT's masked-LM masking of packed batches, token or whole-word, with tensorflow-text
(Devlin et al. 2019, section 3.1 "Task #1"; google-research/bert
`create_pretraining_data.create_masked_lm_predictions`)."""

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text


def word_continuation_ids(vocabulary):
    """Ids of the WordPiece tokens that continue a word (`##` prefix), as a sorted list of int.

    Args:
        vocabulary: list of str tokens (id = index), e.g. `BertTokenizer.vocabulary`.
    """
    return [i for i, token in enumerate(vocabulary) if token.startswith("##")]


class MaskedLMMasker:
    """Dynamic BERT masking of packed batches, with tensorflow-text.

    Token masking (the default): selection uses
    `tensorflow_text.RandomItemSelector` (per row,
    ceil(masked_lm_prob * number of selectable tokens), at most
    `max_predictions_per_seq`; `[CLS]`, `[SEP]` and padding are never
    selectable) and `tensorflow_text.MaskValuesChooser` (80/10/10).

    Whole-word masking (with `continuation_ids`): a word is a selectable
    token and the `##` pieces that follow it (a piece right after `[CLS]` or
    `[SEP]` starts a word, as in google-research/bert `_tokens_to_grams`).
    Words are visited in random order and taken while their pieces fit the
    row's budget (the same ceil(masked_lm_prob * selectable tokens), at most
    `max_predictions_per_seq`), skipping a word too long for what is left,
    as google-research/bert `create_masked_lm_predictions` does; the
    80/10/10 choice is made once per word (every piece of a word becomes
    `[MASK]`, or every piece a random id, or all stay). tensorflow-text's
    rank-3 `mask_language_model` is not used for this: it counts the budget
    in words, so a row could get more masked pieces than
    `max_predictions_per_seq` slots, and it decides 80/10/10 per piece.

    Args:
        config: `PretrainingDataConfig`.
        vocab_size: int, range of random replacement ids.
        mask_id, cls_id, sep_id, pad_id: special token ids.
        continuation_ids: optional list of int, the ids of word-continuing
            pieces (`word_continuation_ids(vocabulary)`); given, whole words
            are masked.

    Call arguments:
        features: dict with int32 `token_ids`, `segment_ids`, `padding_mask`,
            each `(batch_size, sequence_length)`.
        batch_index: int scalar (tensor), position of the batch in the
            stream; with `config.seed` it keys the stateless selection.

    Returns:
        dict: the inputs with `token_ids` masked, plus `masked_lm_positions`
        (int32, ascending), `masked_lm_ids` (int32, the original ids) and
        `masked_lm_weights` (float32, 1 for real predictions, 0 for padding
        slots), each `(batch_size, max_predictions_per_seq)`.

    Raises:
        ValueError: a `continuation_ids` id outside [0, vocab_size).
    """

    def __init__(self, config, vocab_size, mask_id, cls_id, sep_id, pad_id=0,
                 continuation_ids=None):
        self.config = config
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.unselectable_ids = [cls_id, sep_id, pad_id]
        self.whole_word_mask = continuation_ids is not None
        if self.whole_word_mask:
            ids = np.asarray(list(continuation_ids), np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(
                    f"continuation_ids must be in [0, vocab_size={vocab_size}); "
                    f"received ids from {ids.min()} to {ids.max()}."
                )
            table = np.zeros([vocab_size], bool)
            table[ids] = True
            self._is_continuation = tf.constant(table)

    @classmethod
    def from_tokenizer(cls, config, tokenizer, whole_word_mask=False):
        """The masker for a `kbert.text.BertTokenizer`'s vocabulary and special tokens.

        Args:
            config: `PretrainingDataConfig`.
            tokenizer: `kbert.text.BertTokenizer`.
            whole_word_mask: bool, mask whole words (its `##` pieces).
        """
        special = tokenizer.special_token_ids
        continuation = word_continuation_ids(tokenizer.vocabulary) if whole_word_mask else None
        return cls(config, tokenizer.vocab_size, special["mask"], special["cls"], special["sep"],
                   special["pad"], continuation_ids=continuation)

    def __call__(self, features, batch_index=0):
        config = self.config
        seed = tf.stack([tf.constant(config.seed, tf.int64), tf.cast(batch_index, tf.int64)])
        if self.whole_word_mask:
            return self._mask_whole_words(features, seed)

        def shuffle_row(positions):
            # Stateless per-row shuffle: RandomItemSelector shuffles rows in a
            # parallel `map_fn`, where a stateful shuffle would hand out random
            # numbers in a nondeterministic order. Rows hold disjoint flat
            # positions, so the largest one keys the row.
            key = tf.reduce_max(tf.concat([tf.cast(positions, tf.int64), [-1]], 0))
            row_seed = seed + tf.stack([tf.constant(0, tf.int64), key])
            return tf.random.experimental.stateless_shuffle(positions, seed=row_seed)

        token_ids = features["token_ids"]
        lengths = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1)
        ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=lengths)
        selector = tf_text.RandomItemSelector(
            max_selections_per_batch=config.max_predictions_per_seq,
            selection_rate=config.masked_lm_prob,
            unselectable_ids=self.unselectable_ids,
            shuffle_fn=shuffle_row,
        )
        chooser = tf_text.MaskValuesChooser(
            self.vocab_size,
            self.mask_id,
            mask_token_rate=config.mask_token_rate,
            random_token_rate=config.random_token_rate,
        )
        masked, positions, masked_ids = tf_text.mask_language_model(
            ragged, item_selector=selector, mask_values_chooser=chooser
        )
        width = token_ids.shape[1] or tf.shape(token_ids)[1]
        masked = masked.to_tensor(default_value=0, shape=[None, width])
        return self._with_predictions(features, masked, positions, masked_ids)

    def _with_predictions(self, features, masked, positions, masked_ids):
        """The output dict: masked `token_ids` and the padded prediction slots."""
        positions, weights = tf_text.pad_model_inputs(
            positions, max_seq_length=self.config.max_predictions_per_seq
        )
        masked_ids, _ = tf_text.pad_model_inputs(
            masked_ids, max_seq_length=self.config.max_predictions_per_seq
        )
        out = dict(features)
        out["token_ids"] = tf.cast(masked, tf.int32)
        out["masked_lm_positions"] = tf.cast(positions, tf.int32)
        out["masked_lm_ids"] = tf.cast(masked_ids, tf.int32)
        out["masked_lm_weights"] = tf.cast(weights, tf.float32)
        return out

    def _mask_whole_words(self, features, seed):
        """Whole-word masking (see the class docstring). B batch, L sequence length."""
        config = self.config
        token_ids = tf.cast(features["token_ids"], tf.int32)  # [B, L]
        batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        selectable = tf.logical_and(
            tf.cast(features["padding_mask"], tf.bool),
            tf.reduce_all(token_ids[:, :, None] != tf.constant(self.unselectable_ids), axis=-1),
        )  # [B, L]
        after_selectable = tf.pad(selectable[:, :-1], [[0, 0], [1, 0]])
        ids_in_range = tf.clip_by_value(token_ids, 0, self.vocab_size - 1)
        continues = tf.gather(self._is_continuation, ids_in_range) & after_selectable & selectable
        starts = selectable & ~continues
        word = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1, 0)  # [B, L]
        num_words = tf.reduce_sum(tf.cast(starts, tf.int32), axis=1)  # [B]
        # Pieces per word slot, [B, L] (slot w of row b is word w; slots past
        # the row's words hold 0). Unselectable tokens go to a dropped segment.
        rows = tf.range(batch)[:, None] * length
        segments = tf.where(selectable, rows + word, batch * length)
        word_lengths = tf.math.unsorted_segment_sum(
            tf.ones_like(segments), segments, batch * length + 1
        )[:-1]
        word_lengths = tf.reshape(word_lengths, [batch, length])
        num_selectable = tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1)
        budget = tf.minimum(
            tf.cast(tf.math.ceil(num_selectable * config.masked_lm_prob), tf.int32),
            config.max_predictions_per_seq,
        )  # [B]

        order_seed, action_seed, random_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        slots = tf.range(length)[None, :]
        priority = tf.random.stateless_uniform([batch, length], order_seed)
        priority = tf.where(slots < num_words[:, None], priority, 2.0)
        order = tf.argsort(priority, axis=1, stable=True)  # word slots, random order first
        lengths_in_order = tf.gather(word_lengths, order, batch_dims=1)

        def take_if_it_fits(carry, lengths):
            used, _ = carry
            take = (lengths > 0) & (used + lengths <= budget)
            return used + tf.where(take, lengths, 0), take

        _, taken = tf.scan(
            take_if_it_fits,
            tf.transpose(lengths_in_order),
            initializer=(tf.zeros([batch], tf.int32), tf.zeros([batch], tf.bool)),
        )  # [L, B], in `order`
        word_taken = tf.gather(tf.transpose(taken), tf.argsort(order, axis=1), batch_dims=1)
        selected = selectable & tf.gather(word_taken, word, batch_dims=1)  # [B, L]

        # One 80/10/10 draw per word; a random id per piece.
        action = tf.gather(
            tf.random.stateless_uniform([batch, length], action_seed), word, batch_dims=1
        )
        random_ids = tf.random.stateless_uniform(
            [batch, length], random_seed, minval=0, maxval=self.vocab_size, dtype=tf.int32
        )
        replacement = tf.where(
            action < config.mask_token_rate,
            self.mask_id,
            tf.where(action < config.mask_token_rate + config.random_token_rate,
                     random_ids, token_ids),
        )
        masked = tf.where(selected, replacement, token_ids)
        positions = tf.ragged.boolean_mask(tf.broadcast_to(slots, [batch, length]), selected)
        masked_ids = tf.ragged.boolean_mask(token_ids, selected)
        return self._with_predictions(features, masked, positions, masked_ids)
