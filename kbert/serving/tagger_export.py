"""Export of a fine-tuned `BertTokenClassifier`: words in, one tag per word out.

SavedModel (TF Serving layout `BASE/VERSION/`), signatures:
  * `serving_default`: `text` tf.string `(batch,)`, words separated by
    whitespace (as in CoNLL files: punctuation is its own word when the
    text says so) -> tf.string `tags` `(batch, max_words)` (one tag per
    word, "" past a row's end), int32 `num_words` `(batch,)`, int32
    `num_tagged_words` `(batch,)` (words whose first piece fit
    `sequence_length`; the rest get ""), int32 `num_wordpieces` `(batch,)`
    (pieces of all words before the cut, a word without pieces counting as
    its `[UNK]`) and bool `truncated` `(batch,)` (`num_wordpieces >
    sequence_length - 2`: the sentence was cut, possibly inside a word that
    is still tagged from its first piece).
  * `serving_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask`
    `(batch, length)`, length <= `max_position_embeddings` -> float32
    `logits` `(batch, length, num_classes)`.
  * `serving_token_ids_int64`: the same for int64 ids (NumPy arrays from
    Python also work with `serving_token_ids`; int64 tensors need this one).
Requests are checked in the graph and refused with
`tf.errors.InvalidArgumentError` naming the input: text that is not a 1-D
batch of strings, ids not of rank 2 or of different shapes, a length above
`max_position_embeddings`. Each weight is stored once, and the version
folder is written atomically, with a TF Serving warmup request for every
signature in `assets.extra/tf_serving_warmup_requests` (`kbert.serving.warmup`).
Each word is tagged from its first word piece (Devlin et al. 2019, section 5.3).
"""

import os

import numpy as np
import tensorflow as tf

from kbert.serving.saved_model import (
    TEXT_SIGNATURE,
    WARMUP_TEXTS,
    ExportVerificationError,
    add_token_ids_endpoints,
    check_export_target,
    check_text_batch,
    new_export_archive,
    packed_sample_ids,
    run_saved_model_in_fresh_process,
    text_input_specs,
    truncation_outputs,
    write_archive,
)
from kbert.text.bert_word_packer import BertWordPacker


def tag_words(model, packer, label_list, words):
    """Tags a ragged batch of words with `model`, in the graph.

    Args:
        model: `BertTokenClassifier`.
        packer: `BertWordPacker`.
        label_list: tf.string tensor of tag names.
        words: tf.string `tf.RaggedTensor` `(batch, None)`.

    Returns:
        dict: tf.string `tags` `(batch, max_words)`, int32 `num_words`,
        int32 `num_tagged_words`, int32 `num_wordpieces`, bool `truncated`
        (see the module docstring).
    """
    features = packer(words)
    word_ids = features.pop("word_ids")
    logits = model(features, training=False)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    previous = tf.pad(word_ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    is_first = (word_ids >= 0) & (word_ids != previous)
    first_tags = tf.ragged.boolean_mask(tf.gather(label_list, predicted), is_first)
    num_words = tf.cast(words.row_lengths(), tf.int32)
    width = tf.reduce_max(tf.concat([num_words, [0]], axis=0))
    tags = first_tags.to_tensor(
        default_value="", shape=tf.stack([first_tags.nrows(), tf.cast(width, tf.int64)])
    )
    # Pieces per word as the packer counts them (a word without pieces is one [UNK]).
    pieces = tf.maximum(packer.tokenizer(words.flat_values).row_lengths(), 1)
    num_wordpieces = tf.reduce_sum(
        tf.RaggedTensor.from_row_splits(pieces, tf.cast(words.row_splits, pieces.dtype)), axis=1)
    return {
        "tags": tags,
        "num_words": num_words,
        "num_tagged_words": tf.cast(first_tags.row_lengths(), tf.int32),
        **truncation_outputs(num_wordpieces, packer.sequence_length),
    }


def export_tagger_saved_model(model, tokenizer, export_base, label_list, sequence_length=128,
                              version=1):
    """Writes a `BertTokenClassifier` with its tokenizer as a TF Serving SavedModel.

    Args:
        model: `kbert.models.BertTokenClassifier`.
        tokenizer: its `kbert.text.BertTokenizer`.
        export_base: str, the model base folder.
        label_list: list of str tags (id = index).
        sequence_length: int, word pieces per sentence with `[CLS]`/`[SEP]`.
        version: int >= 1.

    Returns:
        str, the path `export_base/version`.

    Raises:
        ValueError: a label list of the wrong size, `sequence_length` above
            `max_position_embeddings`, a bad or existing version (all before
            anything is written; a later failure leaves nothing at
            `export_base/version`).
    """
    path = os.path.join(export_base, str(version))
    if len(label_list) != model.num_classes:
        raise ValueError(
            f"label_list has {len(label_list)} tags but the model has {model.num_classes} classes."
        )
    check_export_target(model, sequence_length, version, path)
    packer = BertWordPacker(tokenizer, sequence_length)
    labels = tf.constant([str(x) for x in label_list])

    def serve_text(text):
        (text,) = check_text_batch(text=text)
        return tag_words(model, packer, labels, tf.strings.split(text))

    def serve_token_ids(features):
        return {"logits": tf.cast(model(features, training=False), tf.float32)}

    archive = new_export_archive(model, packer)
    archive.add_endpoint(
        TEXT_SIGNATURE, serve_text, input_signature=text_input_specs("text")
    )
    add_token_ids_endpoints(archive, serve_token_ids, model.encoder.bert_config)
    features = packer(tf.strings.split(tf.constant(WARMUP_TEXTS)))
    features.pop("word_ids")
    requests = [(TEXT_SIGNATURE, {"text": list(WARMUP_TEXTS)}), *packed_sample_ids(features)]
    return write_archive(archive, path, requests)


def verify_tagger_saved_model(path, model, tokenizer, label_list, sentences, sequence_length=128):
    """Checks a tagger SavedModel (in a fresh process) against the Keras model.

    Args:
        path: the SavedModel folder.
        model, tokenizer, label_list: what was exported.
        sentences: list of lists of words (no word may contain whitespace).
        sequence_length: the export's packed length.

    Returns:
        dict {"tag_agreement": float, "num_words": int}.

    Raises:
        ExportVerificationError: any tag differs, or the load fails.
    """
    texts = [" ".join(words) for words in sentences]
    packer = BertWordPacker(tokenizer, sequence_length)
    expected = tag_words(
        model, packer, tf.constant([str(x) for x in label_list]), tf.ragged.constant(sentences)
    )
    out = run_saved_model_in_fresh_process(path, texts)
    want = expected["tags"].numpy().astype(str)
    got = np.asarray(out["tags"]).astype(str)
    if want.shape != got.shape:
        raise ExportVerificationError(
            f"SavedModel {path} returned tags of shape {got.shape}; Keras gives {want.shape}."
        )
    real = want != ""
    agreement = float(np.mean(want[real] == got[real])) if real.any() else 1.0
    if agreement < 1.0 or not np.array_equal(
        np.asarray(out["num_tagged_words"]), expected["num_tagged_words"].numpy()
    ):
        raise ExportVerificationError(
            f"SavedModel {path} differs from the Keras model: tag agreement {agreement:.4f}."
        )
    return {"tag_agreement": agreement, "num_words": int(real.sum())}
