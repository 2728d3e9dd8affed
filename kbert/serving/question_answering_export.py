"""Export of a fine-tuned `BertSpanLabeler`: question + context in, answer text out.

SavedModel (TF Serving layout `BASE/VERSION/`), signatures:
  * `serving_default`: tf.string `question` and `context` `(batch,)` ->
    tf.string `answer` `(batch,)` (a substring of the context, original
    casing and punctuation), int32 `start_char`/`end_char` `(batch,)`
    (Unicode character offsets into `context`, end exclusive; -1 when there
    is no answer), float32 `score` (start logit + end logit), bool
    `context_truncated` (the context did not fit one window of
    `sequence_length`; its tail was not searched), int32 `num_wordpieces`
    (question and context pieces before any cut) and bool `truncated`
    (the question was cut to `max_query_length` pieces or the context
    was cut).
  * `serving_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask`
    `(batch, length)`, length <= `max_position_embeddings` -> float32
    `start_logits`, `end_logits` `(batch, length)`.
  * `serving_token_ids_int64`: the same for int64 ids (NumPy arrays from
    Python also work with `serving_token_ids`; int64 tensors need this one).
Requests are checked in the graph and refused with
`tf.errors.InvalidArgumentError` naming the input: `question`/`context`
that are not 1-D batches of strings or differ in size, ids not of rank 2 or
of different shapes, a length above `max_position_embeddings`. Each weight
is stored once, and the version folder is written atomically, with a TF
Serving warmup request for every signature in
`assets.extra/tf_serving_warmup_requests` (`kbert.serving.warmup`; the
token-id requests hold the sample question and context packed as a pair).

The text signature packs `[CLS] question [SEP] context [SEP]` in one window
(question cut to `max_query_length` pieces, context to what is left) and
picks the span with the highest start + end logit among context pieces with
`end - start + 1 <= max_answer_length` (google-research/bert
`run_squad.py`'s rule, searched exhaustively). Character offsets come from
the tokenizer: the context is split on whitespace with offsets, each word
is tokenized with offsets (`FastBertTokenizer.tokenize_with_offsets`), and
a piece of a word that normalisation changes in length (accents stripped,
some case mappings) spans its whole word. For long documents use the
Python `kbert.training.tasks.SquadTask.predict` path, which slides
windows with a stride.
"""

import os

import tensorflow as tf
import tensorflow_text as tf_text

from kbert.serving.saved_model import (
    TEXT_SIGNATURE,
    WARMUP_SECOND_TEXTS,
    WARMUP_TEXTS,
    ExportVerificationError,
    add_token_ids_endpoints,
    check_export_target,
    check_text_batch,
    new_export_archive,
    packed_sample_ids,
    run_saved_model_in_fresh_process,
    text_input_specs,
    write_archive,
)
from kbert.text.bert_text_preprocessor import BertTextPreprocessor
from kbert.text.normalization import normalize_text

_NO_SPAN = -1e9


def _context_pieces(tokenizer, context):
    """Context word pieces with byte offsets into the original context.

    Returns:
        (ids, starts, ends): int `tf.RaggedTensor`s `(batch, pieces)`.
    """
    words, word_starts, word_ends = tf_text.WhitespaceTokenizer().tokenize_with_offsets(context)
    flat = words.flat_values
    normalized = normalize_text(flat, tokenizer.lowercase)
    ids, starts, ends = tokenizer._fast_tokenizer.tokenize_with_offsets(normalized)
    same_length = tf.equal(tf.strings.length(normalized), tf.strings.length(flat))
    owner = ids.value_rowids()
    keep = tf.gather(same_length, owner)
    word_start = tf.cast(tf.gather(word_starts.flat_values, owner), tf.int64)
    word_end = tf.cast(tf.gather(word_ends.flat_values, owner), tf.int64)
    starts = tf.where(keep, word_start + tf.cast(starts.flat_values, tf.int64), word_start)
    ends = tf.where(keep, word_start + tf.cast(ends.flat_values, tf.int64), word_end)
    lengths = [words.row_lengths(), ids.row_lengths()]

    def regroup(values):
        return tf.RaggedTensor.from_nested_row_lengths(values, lengths).merge_dims(1, 2)

    return regroup(tf.cast(ids.flat_values, tf.int32)), regroup(starts), regroup(ends)


def answer_questions(model, tokenizer, question, context, sequence_length=384,
                     max_query_length=64, max_answer_length=30):
    """Answers a batch of questions about their contexts, in the graph (one window each).

    Args:
        model: `BertSpanLabeler`.
        tokenizer: `BertTokenizer`.
        question, context: tf.string `(batch,)`.
        sequence_length: int, the packed window length.
        max_query_length: int, question pieces kept.
        max_answer_length: int, the longest answer in pieces.

    Returns:
        dict of `(batch,)` tensors: `answer`, `start_char`, `end_char`,
        `score`, `context_truncated`, `num_wordpieces`, `truncated` (see
        the module docstring).
    """
    special = tokenizer.special_token_ids
    all_question_ids = tokenizer(question)
    question_ids = all_question_ids[:, :max_query_length]
    context_ids, starts, ends = _context_pieces(tokenizer, context)
    question_ids, kept_ids = tf_text.WaterfallTrimmer(sequence_length - 3).trim(
        [question_ids, context_ids]
    )
    num_context = kept_ids.row_lengths()
    truncated = num_context < context_ids.row_lengths()
    token_ids, segment_ids = tf_text.combine_segments(
        [question_ids, kept_ids], start_of_sequence_id=special["cls"],
        end_of_segment_id=special["sep"],
    )
    token_ids, padding_mask = tf_text.pad_model_inputs(
        token_ids, max_seq_length=sequence_length, pad_value=special["pad"]
    )
    segment_ids, _ = tf_text.pad_model_inputs(segment_ids, max_seq_length=sequence_length)
    features = {
        "token_ids": tf.cast(token_ids, tf.int32),
        "segment_ids": tf.cast(segment_ids, tf.int32),
        "padding_mask": tf.cast(padding_mask, tf.int32),
    }
    outputs = model(features, training=False)
    start_logits = tf.cast(outputs["start_logits"], tf.float32)
    end_logits = tf.cast(outputs["end_logits"], tf.float32)
    # Context pieces sit at [offset, offset + num_context) of each row.
    offset = question_ids.row_lengths() + 2
    positions = tf.range(sequence_length, dtype=tf.int64)[None, :]
    in_context = (positions >= offset[:, None]) & (positions < (offset + num_context)[:, None])
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # [B, start, end]
    band = tf.linalg.band_part(tf.ones([sequence_length] * 2), 0, max_answer_length - 1) > 0
    valid = band[None] & in_context[:, :, None] & in_context[:, None, :]
    scores = tf.where(valid, scores, _NO_SPAN)
    flat_best = tf.argmax(tf.reshape(scores, [-1, sequence_length * sequence_length]), axis=-1)
    best_score = tf.reduce_max(scores, axis=[1, 2])
    has_answer = best_score > _NO_SPAN / 2
    start = flat_best // sequence_length - offset
    end = flat_best % sequence_length - offset
    start = tf.where(has_answer, start, 0)
    end = tf.where(has_answer, end, 0)
    # One extra column keeps the gathers in range when no row has a context piece.
    starts = tf.pad(starts.to_tensor(0), [[0, 0], [0, 1]])
    ends = tf.pad(ends.to_tensor(0), [[0, 0], [0, 1]])
    start_byte = tf.where(has_answer, tf.gather(starts, start, batch_dims=1), 0)
    end_byte = tf.where(has_answer, tf.gather(ends, end, batch_dims=1), 0)
    answer = tf.strings.substr(context, start_byte, end_byte - start_byte, unit="BYTE")
    prefix = tf.strings.substr(context, tf.zeros_like(start_byte), start_byte, unit="BYTE")
    start_char = tf.strings.length(prefix, unit="UTF8_CHAR")
    end_char = start_char + tf.strings.length(answer, unit="UTF8_CHAR")
    return {
        "answer": tf.where(has_answer, answer, ""),
        "start_char": tf.where(has_answer, start_char, -1),
        "end_char": tf.where(has_answer, end_char, -1),
        "score": tf.where(has_answer, best_score, float("-inf")),
        "context_truncated": truncated,
        "num_wordpieces": tf.cast(
            all_question_ids.row_lengths() + context_ids.row_lengths(), tf.int32),
        "truncated": truncated | (all_question_ids.row_lengths() > max_query_length),
    }


def export_question_answering_saved_model(model, tokenizer, export_base, sequence_length=384,
                                          max_query_length=64, max_answer_length=30, version=1):
    """Writes a `BertSpanLabeler` with its tokenizer as a TF Serving SavedModel.

    Args:
        model: `kbert.models.BertSpanLabeler`.
        tokenizer: its `kbert.text.BertTokenizer`.
        export_base: str, the model base folder.
        sequence_length, max_query_length, max_answer_length: see `answer_questions`.
        version: int >= 1.

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: `sequence_length` above `max_position_embeddings` or too
            short for `max_query_length`, a bad or existing version (all
            before anything is written; a later failure leaves nothing at
            `export_base/version`).
    """
    if sequence_length < max_query_length + 4:
        raise ValueError(
            f"sequence_length={sequence_length} leaves no context after a "
            f"max_query_length={max_query_length} question and 3 special tokens."
        )
    path = os.path.join(export_base, str(version))
    check_export_target(model, sequence_length, version, path)

    def serve_text(question, context):
        question, context = check_text_batch(question=question, context=context)
        return answer_questions(
            model, tokenizer, question, context, sequence_length, max_query_length,
            max_answer_length,
        )

    def serve_token_ids(features):
        return {k: tf.cast(v, tf.float32) for k, v in model(features, training=False).items()}

    archive = new_export_archive(model, tokenizer)
    archive.add_endpoint(
        TEXT_SIGNATURE, serve_text,
        input_signature=text_input_specs("question", "context"),
    )
    add_token_ids_endpoints(archive, serve_token_ids, model.encoder.bert_config)
    samples = {"question": list(WARMUP_SECOND_TEXTS), "context": list(WARMUP_TEXTS)}
    features = BertTextPreprocessor(tokenizer, sequence_length)(tuple(samples.values()))
    requests = [(TEXT_SIGNATURE, samples), *packed_sample_ids(features)]
    return write_archive(archive, path, requests)


def verify_question_answering_saved_model(path, model, tokenizer, questions, contexts,
                                          sequence_length=384, max_query_length=64,
                                          max_answer_length=30, atol=1e-3):
    """Checks a QA SavedModel (in a fresh process) against the Keras model on the same graph.

    Returns:
        dict {"answer_agreement": float, "max_score_diff": float}.

    Raises:
        ExportVerificationError: an answer or offset differs, a score differs
            by more than `atol`, or the load fails.
    """
    expected = answer_questions(
        model, tokenizer, tf.constant(questions), tf.constant(contexts), sequence_length,
        max_query_length, max_answer_length,
    )
    out = run_saved_model_in_fresh_process(path, {"question": questions, "context": contexts})
    same = [
        a == b.decode("utf-8") and s == t
        for a, b, s, t in zip(
            out["answer"].tolist(), expected["answer"].numpy().tolist(),
            out["start_char"].tolist(), expected["start_char"].numpy().tolist(),
        )
    ]
    agreement = sum(same) / max(len(same), 1)
    finite = expected["score"].numpy() > float("-inf")
    diff = float(abs(out["score"][finite] - expected["score"].numpy()[finite]).max()) if finite.any() else 0.0
    if agreement < 1.0 or not diff <= atol:
        raise ExportVerificationError(
            f"SavedModel {path} differs from the Keras model: answer agreement {agreement:.4f}, "
            f"max score difference {diff:.3g} (atol {atol})."
        )
    return {"answer_agreement": agreement, "max_score_diff": diff}
