"""Fill-mask for pretrained BERTs: text with `[MASK]` in, the top-k tokens at each mask out.

The masked-LM task BERT was pretrained on (Devlin et al. 2019, section 3.1),
served as the SavedModel signature `serving_fill_mask`, in the graph:

  * `text` tf.string `(B,)`, holding zero or more literal `[MASK]`s (case
    sensitive, as HuggingFace's tokenizers match special tokens). The text
    is split on `[MASK]`, each piece is tokenized by the model's
    `BertTokenizer`, and the pieces are joined with the `[MASK]` id between
    them, so `[MASK]` is never split into `[`, `mask`, `]` and is never
    lower-cased (HuggingFace `BertTokenizerFast` gives the same ids). The
    ids are packed as `[CLS] text [SEP]` to the export's `sequence_length`.
    Any batch size works (0 and 256 too); an empty string or invalid UTF-8
    (its bytes become `[UNK]`) is an ordinary row.
  * outputs, where `M` is the largest number of masks of a row in the
    batch (0 when no row has one) and `k` is `top_k`, fixed at export:
      - `mask_positions` int32 `(B, M)`: the index of each mask in the
        packed ids (`[CLS]` is 0), -1 past a row's `num_masks`;
      - `top_token_ids` int32 `(B, M, k)`: the `k` most probable ids at each
        mask, most probable first, -1 in padded slots;
      - `top_tokens` tf.string `(B, M, k)`: those tokens (WordPieces, `##`
        continuations as in `vocab.txt`), "" in padded slots;
      - `top_probabilities` float32 `(B, M, k)`: softmax over the whole
        vocabulary, 0 in padded slots;
      - `num_masks` int32 `(B,)`: masks that fit the packed length;
      - `num_wordpieces` int32 `(B,)`: WordPieces (masks included) before
        truncation;
      - `truncated` bool `(B,)`: the text did not fit
        (`num_wordpieces > sequence_length - 2`); masks past the cut are not
        predicted.

`fill_mask` runs the same computation in Python, for checks and notebooks;
`load_masked_lm` reads a checkpoint's encoder and, where it has one, its
masked-LM head.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from kbert.serving.request_checks import check_text_batch, text_input_specs
from kbert.serving.saved_model import (
    check_sequence_length,
    text_packer,
    truncation_outputs,
)

FILL_MASK_SIGNATURE = "serving_fill_mask"
MASK_TOKEN = "[MASK]"
DEFAULT_TOP_K = 5
# Names of the masked-LM head's weights in the canonical (Google TF1) layout.
MASKED_LM_WEIGHTS = (
    "cls/predictions/transform/dense/kernel",
    "cls/predictions/transform/dense/bias",
    "cls/predictions/transform/LayerNorm/gamma",
    "cls/predictions/transform/LayerNorm/beta",
    "cls/predictions/output_bias",
)
NEXT_SENTENCE_WEIGHTS = ("cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias")


def check_top_k(top_k, vocab_size):
    """Raises ValueError unless `top_k` is an int in `[1, vocab_size]` (both named)."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) \
            or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k={top_k!r} must be an int in [1, vocab_size={vocab_size}].")


def tokenize_with_masks(tokenizer, text):
    """WordPiece ids of a batch of text in which each literal `[MASK]` becomes the mask id.

    Args:
        tokenizer: `kbert.text.BertTokenizer`.
        text: tf.string `(batch_size,)`.

    Returns:
        int32 `tf.RaggedTensor` `(batch_size, None)`, no special tokens added
        (pack with `BertPacker`).
    """
    mask_id = tokenizer.special_token_ids["mask"]
    pieces = tf.strings.split(text, sep=MASK_TOKEN)  # (B, pieces): at least one per row
    ids = tokenizer(pieces.flat_values)  # (pieces, None)
    masks = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(ids.row_splits)[0] - 1, 1], mask_id))
    # Each piece followed by [MASK], regrouped per text; the mask after the last piece dropped.
    followed = tf.concat([ids, tf.cast(masks, ids.dtype)], axis=1)
    joined = tf.RaggedTensor.from_row_splits(followed, pieces.row_splits).merge_dims(1, 2)
    return joined[:, :-1]


def fill_mask_outputs(pretrainer, tokenizer, packer, text, top_k):
    """The fill-mask outputs of a batch of text, in the graph, without token strings.

    Args:
        pretrainer: a `BertPretrainer` (or any object with `.encoder`, a
            `BertEncoder`, and `.masked_lm_head`, its `MaskedLMHead`).
        tokenizer: its `kbert.text.BertTokenizer`.
        packer: a `BertPacker` of the tokenizer's special ids.
        text: tf.string `(batch_size,)`.
        top_k: int, predictions per mask.

    Returns:
        dict: `mask_positions`, `top_token_ids`, `top_probabilities`,
        `num_masks`, `num_wordpieces`, `truncated` (see the module docstring).
    """
    ids = tokenize_with_masks(tokenizer, text)
    features = packer(ids)
    token_ids = features["token_ids"]
    length = tf.shape(token_ids)[1]
    is_mask = tf.equal(token_ids, tokenizer.special_token_ids["mask"])
    columns = tf.broadcast_to(tf.range(length, dtype=tf.int32)[None, :], tf.shape(token_ids))
    positions = tf.ragged.boolean_mask(columns, is_mask)
    num_masks = tf.cast(positions.row_lengths(), tf.int32)
    positions = positions.to_tensor(default_value=-1)  # (B, M)
    real = positions >= 0
    sequence_output = pretrainer.encoder(features, training=False)["sequence_output"]
    logits = pretrainer.masked_lm_head(sequence_output, tf.maximum(positions, 0))  # (B, M, V)
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    best = tf.math.top_k(probabilities, k=top_k)
    return {
        "mask_positions": positions,
        "top_token_ids": tf.where(real[..., None], best.indices, -1),
        "top_probabilities": tf.where(real[..., None], best.values, 0.0),
        "num_masks": num_masks,
        **truncation_outputs(ids.row_lengths(), packer.sequence_length),
    }


def add_fill_mask_endpoint(archive, pretrainer, tokenizer, packer, id_to_token, top_k):
    """Adds `serving_fill_mask` (see the module docstring) to a `keras.export.ExportArchive`.

    Args:
        archive: the archive.
        pretrainer, tokenizer, packer, top_k: see `fill_mask_outputs`.
        id_to_token: callable int64 ids -> tf.string tokens, in the graph
            (the `vocab.txt` asset's lookup table).
    """
    def serve_fill_mask(text):
        (text,) = check_text_batch(text=text)
        outputs = fill_mask_outputs(pretrainer, tokenizer, packer, text, top_k)
        ids = outputs["top_token_ids"]
        tokens = id_to_token(tf.cast(tf.maximum(ids, 0), tf.int64))
        outputs["top_tokens"] = tf.where(ids >= 0, tokens, "")
        return outputs

    archive.add_endpoint(FILL_MASK_SIGNATURE, serve_fill_mask,
                         input_signature=text_input_specs("text"))


def fill_mask(pretrainer, tokenizer, texts, top_k=DEFAULT_TOP_K, sequence_length=128):
    """Predicts the tokens at each `[MASK]` of `texts` (what `serving_fill_mask` returns).

    Example:
    >>> out = fill_mask(pretrainer, tokenizer, ["paris is the [MASK] of france."])  # doctest: +SKIP
    >>> out["top_tokens"][0, 0, 0], out["top_probabilities"][0, 0, 0]  # doctest: +SKIP
    ('capital', 0.99...)

    Args:
        pretrainer: `kbert.models.BertPretrainer` (any dtype policy; the
            probabilities are float32).
        tokenizer: its `kbert.text.BertTokenizer`.
        texts: list of str (or a tf.string `(batch_size,)` tensor), each with
            zero or more `[MASK]`s.
        top_k: int in `[1, vocab_size]`.
        sequence_length: int, the packed length (3 to `max_position_embeddings`).

    Returns:
        dict of NumPy arrays, the outputs of the module docstring:
        `mask_positions`, `top_token_ids`, `top_tokens` (str), `top_probabilities`,
        `num_masks`, `num_wordpieces`, `truncated`.

    Raises:
        ValueError: a bad `top_k`, or a `sequence_length` below 3 or above
            `max_position_embeddings`.
    """
    check_top_k(top_k, tokenizer.vocab_size)
    check_sequence_length(pretrainer.encoder, sequence_length)
    packer = text_packer(tokenizer, sequence_length)
    text = texts if tf.is_tensor(texts) else tf.constant(list(texts), tf.string, shape=[len(texts)])
    outputs = {k: keras.ops.convert_to_numpy(v)
               for k, v in fill_mask_outputs(pretrainer, tokenizer, packer, text, top_k).items()}
    vocabulary = np.asarray(list(tokenizer.vocabulary) + [""], dtype=object)
    outputs["top_tokens"] = vocabulary[outputs["top_token_ids"]].astype(str)  # -1 -> ""
    return outputs


def load_masked_lm(source, config=None):
    """Loads a checkpoint's encoder and, when the checkpoint has one, its masked-LM head.

    The head is read wherever `kbert.checkpoints` reads heads: a kbert run
    folder of `trainers.pretrain` (`pretrainer.keras`) or `.keras`
    pretrainer file, HuggingFace `BertForPreTraining` folders (and
    `BertForMaskedLM` ones that keep the pooler), Google TF1 checkpoints
    with `cls/predictions/*`, keras-hub `(backbone, MaskedLMHead)`. A
    checkpoint with the masked-LM head but no next-sentence head
    (`BertForMaskedLM`) gets a freshly initialised NSP layer, which no
    export uses. Everything is float32.

    Args:
        source: anything `kbert.checkpoints.load` reads.
        config: optional `BertConfig` or JSON path.

    Returns:
        `(encoder, pretrainer)`: the `BertEncoder`, and a `BertPretrainer`
        around it with the checkpoint's head, or None when the checkpoint
        has no masked-LM head (HuggingFace `BertModel` folders such as
        all-MiniLM-L6-v2, `encoder.keras`, Model Garden encoders).

    Raises:
        What `kbert.checkpoints.read_canonical` and `assign_model` raise:
        FileNotFoundError, ValueError, `CheckpointMismatchError` (names and
        shapes listed).
    """
    from kbert.checkpoints import canonical, read_canonical
    from kbert.models import BertEncoder, BertPretrainer

    weights, config = read_canonical(source, config, pretraining=True)
    encoder = BertEncoder.from_bert_config(config, dtype="float32")
    present = [name for name in MASKED_LM_WEIGHTS if name in weights]
    if present and len(present) < len(MASKED_LM_WEIGHTS):
        raise canonical.CheckpointMismatchError(
            f"{source} holds part of a masked-LM head: missing "
            f"{sorted(set(MASKED_LM_WEIGHTS) - set(present))}."
        )
    if not present:
        canonical.assign_model(encoder, weights, allow_unused_prefixes=(canonical.HEAD_PREFIX,))
        return encoder, None
    pretrainer = BertPretrainer(encoder)
    initial = canonical.read_model(pretrainer)
    for name in NEXT_SENTENCE_WEIGHTS:
        weights.setdefault(name, initial[name])
    canonical.assign_model(pretrainer, weights)
    return encoder, pretrainer


def compare_fill_mask(actual, expected, atol, what):
    """Checks fill-mask outputs (e.g. a SavedModel's) against `fill_mask`'s.

    Positions, mask counts, WordPiece counts and truncation must be equal,
    probabilities within `atol`, and the ids equal at every rank except where
    the expected probability ties (within `atol`) with a neighbouring rank or
    is the last rank (whose runner-up is not returned), where float rounding
    may order tied tokens either way; where the ids agree, so must `top_tokens`.

    Args:
        actual, expected: dicts of the outputs named in the module docstring.
        atol: float, the largest allowed difference of a probability.
        what: str naming the artifact in the error.

    Returns:
        float, the largest absolute difference of the probabilities (0.0 for no masks).

    Raises:
        ExportVerificationError: any disagreement (which output, and the values).
    """
    from kbert.serving.saved_model import ExportVerificationError

    for name in ("mask_positions", "num_masks", "num_wordpieces", "truncated"):
        if not np.array_equal(np.asarray(actual[name]), np.asarray(expected[name])):
            raise ExportVerificationError(
                f"{what}: `{name}` is {np.asarray(actual[name]).tolist()}, the Keras model "
                f"gives {np.asarray(expected[name]).tolist()}."
            )
    want = np.asarray(expected["top_probabilities"], np.float32)
    got = np.asarray(actual["top_probabilities"], np.float32)
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    if not diff <= atol:
        raise ExportVerificationError(
            f"{what}: fill-mask probabilities differ from the Keras model by {diff:.3g} "
            f"(atol {atol})."
        )
    gaps = np.abs(np.diff(want, axis=-1)) <= atol
    pad = np.ones(want.shape[:-1] + (1,), bool)
    tied = np.concatenate([gaps, pad], axis=-1) | np.concatenate([~pad, gaps], axis=-1)
    differ = (np.asarray(actual["top_token_ids"]) != np.asarray(expected["top_token_ids"])) & ~tied
    if differ.any():
        b, m, j = np.argwhere(differ)[0]
        raise ExportVerificationError(
            f"{what}: text {b}, mask {m}, rank {j}: token id "
            f"{int(np.asarray(actual['top_token_ids'])[b, m, j])}, the Keras model gives "
            f"{int(np.asarray(expected['top_token_ids'])[b, m, j])}."
        )
    same = np.asarray(actual["top_token_ids"]) == np.asarray(expected["top_token_ids"])
    got_tokens = np.asarray(actual["top_tokens"]).astype(str)[same]
    if not np.array_equal(got_tokens, np.asarray(expected["top_tokens"]).astype(str)[same]):
        raise ExportVerificationError(f"{what}: `top_tokens` are not the tokens of `top_token_ids`.")
    return diff
