"""SavedModel export for TF Serving: raw-text and token-id signatures.

Shared by every SavedModel/TFLite writer in `kbert.serving` (some re-exported
here from the modules that hold them):
  * `check_export_target` validates before anything is written;
  * `new_export_archive`, `write_archive`, `atomic_output`
    (`kbert.serving.archive`): an export archive that stores each weight
    once, written into a temporary sibling renamed into place with its TF
    Serving warmup file, so a failure leaves nothing at the target;
  * `add_token_ids_endpoints` (`kbert.serving.request_checks`) adds the
    token-id signatures (int32 and int64), whose requests are checked in the
    graph (`check_token_ids_batch`), as text signatures are
    (`text_input_specs`, `check_text_batch`);
  * `run_requests_in_fresh_process`, `compare_outputs`,
    `ExportVerificationError` (`kbert.serving.fresh_process`): an export run
    as TF Serving loads it and compared with the Keras model;
  * text signatures say when a text was cut to the packed length
    (`num_wordpieces`, `truncated`).
"""

import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from kbert.serving.archive import (  # noqa: F401  (re-exported for the exporters)
    atomic_output,
    new_export_archive,
    write_archive,
)
from kbert.serving.fresh_process import (  # noqa: F401  (re-exported for the exporters)
    ExportVerificationError,
    compare_outputs,
    run_requests_in_fresh_process,
    run_saved_model_in_fresh_process,
)
from kbert.serving.request_checks import (  # noqa: F401  (re-exported for the exporters)
    TEXT_SIGNATURE,
    TOKEN_IDS_INT64_SIGNATURE,
    TOKEN_IDS_SIGNATURE,
    add_token_ids_endpoints,
    check_text_batch,
    check_token_ids_batch,
    text_input_specs,
    token_ids_input_specs,
)
from kbert.text.bert_packer import BertPacker, min_sequence_length
from kbert.text.vocabulary import load_vocabulary

WORDPIECES_SIGNATURE = "serving_wordpieces"
# Sample inputs of the warmup files (`kbert.serving.warmup`): a sentence and an empty string;
# second segments (text pairs, QA contexts) for two-input signatures.
WARMUP_TEXTS = ("The quick brown fox jumps over the lazy dog.", "")
WARMUP_SECOND_TEXTS = ("Who jumps over the lazy dog?", "")


class _VocabularyTable(tf.Module):
    """id -> token table read from `vocab.txt`; makes the file a SavedModel asset."""

    def __init__(self, vocab_path):
        super().__init__(name="vocabulary")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_path,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )


def _bert_config(model):
    """The `BertConfig` of an encoder or of a task model's encoder."""
    config = getattr(model, "bert_config", None)
    return config if config is not None else model.encoder.bert_config


def check_sequence_length(model, sequence_length):
    """Validates the packed (or fixed) length of an export.

    Args:
        model: a `BertEncoder` or a task model (with `.encoder`).
        sequence_length: int.

    Raises:
        ValueError: `sequence_length` not an int >= 3 (`[CLS]`, at least one
            token and `[SEP]`, as `BertPacker` requires) or above the
            encoder's `max_position_embeddings`.
    """
    limit = _bert_config(model).max_position_embeddings
    minimum = min_sequence_length(1)
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, numbers.Integral) \
            or sequence_length < minimum:
        raise ValueError(
            f"sequence_length={sequence_length!r} must be an int >= {minimum} "
            "([CLS], at least one token and [SEP])."
        )
    if sequence_length > limit:
        raise ValueError(
            f"sequence_length={sequence_length} exceeds max_position_embeddings={limit}."
        )


def check_export_target(model, sequence_length, version, path):
    """Validates a SavedModel export before anything is written.

    Args:
        model: a `BertEncoder` or a task model (with `.encoder`).
        sequence_length: int, the packed length of the text signature.
        version: int, the TF Serving version.
        path: str, the version folder to be written.

    Raises:
        ValueError: a bad `sequence_length` (see `check_sequence_length`),
            `version` < 1, or an existing `path` (a version is never
            overwritten).
    """
    check_sequence_length(model, sequence_length)
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise ValueError(f"version={version!r} must be an int >= 1.")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; export to a new version or remove it.")


def packed_sample_ids(features):
    """The warmup requests of both token-id signatures for packed int32 `features`.

    Args:
        features: dict of `INPUT_NAMES` -> int `(batch, length)` arrays or tensors.

    Returns:
        list of `(signature, inputs)`: `serving_token_ids` with int32 and
        `serving_token_ids_int64` with int64 arrays.
    """
    arrays = {k: np.asarray(v) for k, v in features.items()}
    return [(TOKEN_IDS_SIGNATURE, {k: v.astype(np.int32) for k, v in arrays.items()}),
            (TOKEN_IDS_INT64_SIGNATURE, {k: v.astype(np.int64) for k, v in arrays.items()})]


def text_to_inputs(tokenizer, packer, text):
    """Tokenizes and packs a batch of strings (single segment).

    Returns:
        (features, num_wordpieces): the packed int32 dict of `INPUT_NAMES`,
        each `(batch_size, sequence_length)`, and int32 `(batch_size,)` counts
        of WordPieces before truncation (more than `sequence_length - 2` means
        the text was cut: see `truncation_outputs`).
    """
    ids = tokenizer(text)
    return packer(ids), tf.cast(ids.row_lengths(), tf.int32)


def truncation_outputs(num_wordpieces, sequence_length, num_segments=1):
    """The `num_wordpieces` and `truncated` outputs of a text signature.

    Args:
        num_wordpieces: int `(batch,)` WordPieces before truncation (all segments).
        sequence_length: int, the packed length.
        num_segments: 1 (`[CLS] A [SEP]`) or 2 (`[CLS] A [SEP] B [SEP]`).

    Returns:
        dict: int32 `num_wordpieces` `(batch,)` and bool `truncated`
        `(batch,)`, True where the pieces exceed the
        `sequence_length - num_segments - 1` left by the special tokens (the
        packer then cut them).
    """
    num_wordpieces = tf.cast(num_wordpieces, tf.int32)
    return {"num_wordpieces": num_wordpieces,
            "truncated": num_wordpieces > sequence_length - num_segments - 1}


def export_saved_model(encoder, tokenizer, vocab_path, export_base, sequence_length=128, version=1,
                       top_k=5, warmup_texts=WARMUP_TEXTS):
    """Writes `encoder` + in-graph tokenizer as a SavedModel in TF Serving's layout.

    The folder `export_base/version/` holds these signatures:
      * `serving_default`: `text` tf.string `(batch,)` -> float32
        `pooled_output` `(batch, hidden_size)`, `sequence_output`
        `(batch, sequence_length, hidden_size)`, int32 `padding_mask`
        `(batch, sequence_length)`, int32 `num_wordpieces` `(batch,)` (the
        untruncated length) and bool `truncated` `(batch,)` (the text was
        cut: `num_wordpieces > sequence_length - 2`). Text is tokenized in
        the graph and packed as `[CLS] text [SEP]`, truncated to
        `sequence_length`; empty strings, invalid UTF-8 (its bytes become
        `[UNK]`) and any batch size work.
      * `serving_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask`
        `(batch, length)` with length <= `max_position_embeddings` -> float32
        `pooled_output`, `sequence_output`.
      * `serving_token_ids_int64`: the same for int64 ids (range-checked,
        then cast to int32). From Python, NumPy int64 arrays also work with
        `serving_token_ids`; an int64 *tensor* needs this signature.
      * `serving_wordpieces`: `text` -> the packed `token_ids` and their
        `wordpieces` strings, read from the `vocab.txt` asset, with
        `num_wordpieces` and `truncated`.
      * `serving_fill_mask`, when `encoder` is a `BertPretrainer`: `text`
        with `[MASK]`s -> the `top_k` tokens and probabilities at each mask
        (`kbert.serving.fill_mask`).
    Requests are checked in the graph and refused with
    `tf.errors.InvalidArgumentError` naming the input: text that is not a
    1-D batch of strings (a scalar, a matrix), ids not of rank 2, ids whose
    shapes differ, a length of 0 or above `max_position_embeddings`, ids out
    of range.
    The vocabulary is copied into `assets/`, and the tokenizer's model is a
    constant of the graph, so the folder works after being moved and after the
    original vocabulary is deleted. `assets.extra/tf_serving_warmup_requests`
    holds a warmup request for every signature (`warmup_texts`, their packed
    ids in int32 and int64, and a fill-mask sentence). Each weight is stored
    once (`new_export_archive`), and the folder is written atomically: on a
    failure nothing is left at `export_base/version`. Loading needs
    `import tensorflow_text`.

    Args:
        encoder: `kbert.models.BertEncoder`, or a `BertPretrainer` (its
            encoder is exported, with the fill-mask signature); any dtype
            policy (outputs are cast to float32).
        tokenizer: `kbert.text.BertTokenizer` built from `vocab_path`.
        vocab_path: str, the `vocab.txt` of `tokenizer`.
        export_base: str, model base folder for TF Serving.
        sequence_length: int, packed length of the text signatures.
        version: int > 0, the version subfolder.
        top_k: int in `[1, vocab_size]`, predictions per mask of `serving_fill_mask`.
        warmup_texts: non-empty sequence of str, the text of the warmup requests.

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: `sequence_length` below 3 or above the encoder's
            `max_position_embeddings`, `version < 1`, an existing version
            folder, a bad `top_k`, no `warmup_texts`, or a `vocab_path` that
            is not the tokenizer's vocabulary (both sizes named; see
            `check_vocabulary_file`), all before anything is written.
        FileNotFoundError, IsADirectoryError: an unreadable `vocab_path`.
    """
    from kbert.models import BertPretrainer
    from kbert.serving import fill_mask

    pretrainer = encoder if isinstance(encoder, BertPretrainer) else None
    encoder = pretrainer.encoder if pretrainer is not None else encoder
    config = encoder.bert_config
    path = os.path.join(export_base, str(version))
    check_export_target(encoder, sequence_length, version, path)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the encoder's "
            f"vocab_size is {config.vocab_size}."
        )
    if pretrainer is not None:
        fill_mask.check_top_k(top_k, config.vocab_size)

    def encode(features):
        outputs = encoder(features, training=False)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    archive = text_model_archive(encoder, tokenizer, vocab_path, sequence_length, encode,
                                 with_padding_mask=True, pretrainer=pretrainer, top_k=top_k)
    requests = text_model_warmup_requests(tokenizer, sequence_length, warmup_texts,
                                          fill_mask=pretrainer is not None)
    return write_archive(archive, path, requests)


def check_vocabulary_file(tokenizer, vocab_path):
    """Checks that `vocab_path` holds exactly the tokenizer's vocabulary.

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: an unreadable
            `vocab_path` (see `load_vocabulary`).
        ValueError: another vocabulary, naming the file and both sizes (and,
            for equal sizes, the first id whose token differs).
    """
    tokens = load_vocabulary(vocab_path)
    expected = list(tokenizer.vocabulary)
    if tokens == expected:
        return
    detail = f"the file has {len(tokens)} tokens, the tokenizer {len(expected)}"
    if len(tokens) == len(expected):
        i = next(i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b)
        detail += f" (id {i} is {tokens[i]!r} in the file, {expected[i]!r} in the tokenizer)"
    raise ValueError(f"{vocab_path} is not the vocabulary the tokenizer was built from: {detail}.")


def text_model_archive(model, tokenizer, vocab_path, sequence_length, serve,
                       with_padding_mask=False, pretrainer=None, top_k=5):
    """The export archive of a single-text model: text, token-id and wordpiece signatures.

    Signatures: `serving_default` (`text` tf.string `(batch,)`, checked by
    `check_text_batch`, tokenized and packed as `[CLS] text [SEP]` to
    `sequence_length`) -> `serve`'s outputs + int32 `num_wordpieces` and
    bool `truncated` (`truncation_outputs`), + int32 `padding_mask` when
    `with_padding_mask`; the token-id signatures of
    `add_token_ids_endpoints` -> `serve`'s outputs; `serving_wordpieces`
    (`text` -> packed `token_ids`, their `wordpieces` from the `vocab.txt`
    asset, `num_wordpieces`, `truncated`); and, with a `pretrainer`,
    `serving_fill_mask` (`kbert.serving.fill_mask`). Each weight is stored
    once (`new_export_archive`).

    Args:
        model: the Keras model `serve` calls (its encoder's `bert_config` is used).
        tokenizer: `kbert.text.BertTokenizer` of `vocab_path`.
        vocab_path: str.
        sequence_length: int, packed length of the text signatures.
        serve: callable, dict of int32 features -> dict of float32 outputs.
        with_padding_mask: bool, also return the packed `padding_mask` for text.
        pretrainer: optional `BertPretrainer` whose encoder `serve` runs: adds
            `serving_fill_mask`.
        top_k: int, predictions per mask of `serving_fill_mask`.

    Returns:
        `keras.export.ExportArchive`, ready for `write_archive` (with
        `text_model_warmup_requests`).

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: an unreadable
            `vocab_path` (see `load_vocabulary`).
        ValueError: `vocab_path` is not the tokenizer's vocabulary (its
            size and the tokenizer's named; the `serving_wordpieces`
            signature would read the wrong tokens, or b'' past its end).
    """
    check_vocabulary_file(tokenizer, vocab_path)
    packer = text_packer(tokenizer, sequence_length)
    vocabulary = _VocabularyTable(vocab_path)
    encoder = getattr(model, "encoder", model)

    def serve_text(text):
        (text,) = check_text_batch(text=text)
        features, num_wordpieces = text_to_inputs(tokenizer, packer, text)
        outputs = dict(serve(features))
        if with_padding_mask:
            outputs["padding_mask"] = features["padding_mask"]
        outputs.update(truncation_outputs(num_wordpieces, sequence_length))
        return outputs

    def serve_wordpieces(text):
        (text,) = check_text_batch(text=text)
        features, num_wordpieces = text_to_inputs(tokenizer, packer, text)
        ids = features["token_ids"]
        return {"token_ids": ids, "wordpieces": vocabulary.table.lookup(tf.cast(ids, tf.int64)),
                **truncation_outputs(num_wordpieces, sequence_length)}

    text_spec = text_input_specs("text")
    archive = new_export_archive(model, vocabulary)
    archive.add_endpoint(TEXT_SIGNATURE, serve_text, input_signature=text_spec)
    add_token_ids_endpoints(archive, serve, encoder.bert_config)
    archive.add_endpoint(WORDPIECES_SIGNATURE, serve_wordpieces, input_signature=text_spec)
    if pretrainer is not None:
        from kbert.serving import fill_mask

        fill_mask.add_fill_mask_endpoint(archive, pretrainer, tokenizer, packer,
                                         vocabulary.table.lookup, top_k)
    return archive


def text_model_warmup_requests(tokenizer, sequence_length, texts=WARMUP_TEXTS, fill_mask=False):
    """Warmup requests for every signature of `text_model_archive`.

    Args:
        tokenizer: the export's `BertTokenizer`.
        sequence_length: int, its packed length.
        texts: non-empty sequence of str: the `text` of `serving_default`
            and `serving_wordpieces`; their packed ids feed both token-id
            signatures.
        fill_mask: bool, add a `serving_fill_mask` request (the first text
            with its middle word replaced by `[MASK]`, or `[MASK]` alone).

    Returns:
        list of `(signature, inputs)` for `write_archive`.

    Raises:
        ValueError: no `texts`.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("warmup_texts must hold at least one string.")
    packer = text_packer(tokenizer, sequence_length)
    features, _ = text_to_inputs(tokenizer, packer, tf.constant(texts))
    requests = [(TEXT_SIGNATURE, {"text": texts}), *packed_sample_ids(features),
                (WORDPIECES_SIGNATURE, {"text": texts})]
    if fill_mask:
        from kbert.serving.fill_mask import FILL_MASK_SIGNATURE, MASK_TOKEN

        words = texts[0].split()
        words[len(words) // 2:len(words) // 2 + 1] = [MASK_TOKEN]
        requests.append((FILL_MASK_SIGNATURE, {"text": [" ".join(words)]}))
    return requests


def text_packer(tokenizer, sequence_length):
    """A `BertPacker` of `tokenizer`'s special ids, single segment."""
    special = tokenizer.special_token_ids
    return BertPacker(sequence_length, special["cls"], special["sep"], special["pad"])


def verify_saved_model(path, encoder, tokenizer, texts, sequence_length=128, atol=1e-4):
    """Checks a SavedModel from `export_saved_model` against the Keras model.

    Runs `serving_default` in a fresh process (as TF Serving would load it)
    and compares `pooled_output` and `sequence_output` (on real tokens) with
    `encoder` on the same texts.

    Returns:
        float, the largest absolute difference.

    Raises:
        ExportVerificationError: a difference above `atol`, or a load failure.
    """
    features, _ = text_to_inputs(tokenizer, text_packer(tokenizer, sequence_length),
                                 tf.constant(texts))
    expected = {
        k: keras.ops.convert_to_numpy(v).astype(np.float32)
        for k, v in encoder(features, training=False).items()
    }
    actual = run_saved_model_in_fresh_process(path, texts)
    return compare_outputs(actual, expected, features["padding_mask"], atol, f"SavedModel {path}")
