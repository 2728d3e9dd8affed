"""Export of a `BertTextEmbedder`: text in, sentence embeddings out (TF Serving SavedModel).

SavedModel (TF Serving layout `BASE/VERSION/`), signatures:
  * `serving_default`: `text` tf.string `(batch,)` -> float32 `embeddings`
    `(batch, hidden_size)` (pooled and, if the embedder normalises, of unit
    L2 norm: Reimers & Gurevych 2019, sentence-transformers' recipe),
    int32 `num_wordpieces` `(batch,)` (WordPieces before truncation) and
    bool `truncated` `(batch,)` (the text was cut:
    `num_wordpieces > sequence_length - 2`).
  * `serving_token_ids` (int32) and `serving_token_ids_int64`: `token_ids`,
    `segment_ids`, `padding_mask` `(batch, length)`, length <=
    `max_position_embeddings`, checked in the graph -> float32 `embeddings`.
  * `serving_wordpieces`: `text` -> the packed int32 `token_ids` and their
    tf.string `wordpieces`, read from the `vocab.txt` asset (what the model
    saw), with `num_wordpieces` and `truncated`.
`assets.extra/tf_serving_warmup_requests` holds a TF Serving warmup request
for every signature (`kbert.serving.warmup`).
"""

import os

import keras
import numpy as np
import tensorflow as tf

from kbert.serving.saved_model import (
    WARMUP_TEXTS,
    ExportVerificationError,
    check_export_target,
    run_saved_model_in_fresh_process,
    text_model_archive,
    text_model_warmup_requests,
    text_packer,
    text_to_inputs,
    write_archive,
)
from kbert.text.vocabulary import load_vocabulary


def export_embedder_saved_model(embedder, tokenizer, vocab_path, export_base, sequence_length=128,
                                version=1, warmup_texts=WARMUP_TEXTS):
    """Writes a `BertTextEmbedder` with its in-graph tokenizer as a TF Serving SavedModel.

    Text is tokenized in the graph and packed as `[CLS] text [SEP]`,
    truncated to `sequence_length` (see the module docstring for the
    signatures). The vocabulary is copied into `assets/` and the tokenizer's
    model is a constant of the graph, so the folder works after being moved.
    Loading needs `import tensorflow_text`.

    Args:
        embedder: `kbert.models.BertTextEmbedder` (any dtype policy; the
            embeddings are float32).
        tokenizer: `kbert.text.BertTokenizer` built from `vocab_path`.
        vocab_path: str, the `vocab.txt` of `tokenizer`.
        export_base: str, the model base folder (TF Serving's `--model_base_path`).
        sequence_length: int <= `max_position_embeddings`, the packed length
            of the text signatures (all-MiniLM-L6-v2 was trained with 256
            at most, and sentence-transformers truncates there).
        version: int >= 1, the version subfolder.
        warmup_texts: non-empty sequence of str, the text of the warmup
            requests (their packed ids feed the token-id signatures').

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: `sequence_length` above `max_position_embeddings`,
            `version` < 1, an existing version folder, no `warmup_texts`, or
            a tokenizer or `vocab_path` whose vocabulary is not the
            encoder's (sizes named).
    """
    path = os.path.join(export_base, str(version))
    check_export_target(embedder, sequence_length, version, path)
    vocab_size = embedder.encoder.bert_config.vocab_size
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the encoder's vocab_size "
            f"is {vocab_size}."
        )
    if load_vocabulary(vocab_path) != list(tokenizer.vocabulary):
        raise ValueError(f"{vocab_path} is not the vocabulary the tokenizer was built from.")

    def embed(features):
        return {"embeddings": tf.cast(embedder(features, training=False), tf.float32)}

    archive = text_model_archive(embedder, tokenizer, vocab_path, sequence_length, embed)
    requests = text_model_warmup_requests(tokenizer, sequence_length, warmup_texts)
    return write_archive(archive, path, requests)


def verify_embedder_saved_model(path, embedder, tokenizer, texts, sequence_length=128, atol=1e-4):
    """Checks a SavedModel from `export_embedder_saved_model` against the Keras model.

    Runs `serving_default` in a fresh Python process (as TF Serving loads
    the folder, without this process's objects) on `texts` and compares its
    `embeddings` with `embedder` on the same texts tokenized here, and its
    `num_wordpieces` with this tokenizer's counts.

    Args:
        path: str, the SavedModel folder.
        embedder: the `BertTextEmbedder` that was exported.
        tokenizer: its `kbert.text.BertTokenizer`.
        texts: list of str.
        sequence_length: int, the length the folder was exported with.
        atol: float, the largest allowed absolute difference.

    Returns:
        float, the largest absolute difference of the embeddings.

    Raises:
        ExportVerificationError: a difference above `atol` (or NaN), other
            WordPiece counts, or a folder that fails to load.
    """
    features, num_wordpieces = text_to_inputs(
        tokenizer, text_packer(tokenizer, sequence_length), tf.constant(list(texts), tf.string)
    )
    expected = keras.ops.convert_to_numpy(embedder(features, training=False)).astype(np.float32)
    actual = run_saved_model_in_fresh_process(path, list(texts))
    diff = float(np.abs(actual["embeddings"] - expected).max())
    if not diff <= atol:
        raise ExportVerificationError(
            f"SavedModel {path} differs from the Keras model: max abs difference of the "
            f"embeddings {diff:.3g} exceeds atol={atol}."
        )
    if not np.array_equal(actual["num_wordpieces"], num_wordpieces.numpy()):
        raise ExportVerificationError(
            f"SavedModel {path} counts other WordPieces than the tokenizer: "
            f"{actual['num_wordpieces'].tolist()} != {num_wordpieces.numpy().tolist()}."
        )
    return diff
