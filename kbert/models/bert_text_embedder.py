"""Sentence embeddings from a BERT encoder: pooled token states, optionally L2-normalised
(Sentence-BERT, Reimers & Gurevych 2019, section 3; sentence-transformers' `Pooling`)."""

import keras
from keras import ops

from kbert.models.task_heads import BertTaskModel

POOLING_MODES = ("mean", "cls", "max")
# sentence-transformers' constants: the smallest token count of a mean
# (`torch.clamp(min=1e-9)`), the value padded positions get before a max, and
# the smallest norm `torch.nn.functional.normalize` divides by.
_MEAN_EPSILON = 1e-9
_MAX_FILL = -1e9
_NORM_EPSILON = 1e-12


def _check_pooling(pooling):
    if pooling not in POOLING_MODES:
        raise ValueError(f"`pooling` must be one of {POOLING_MODES}; received {pooling!r}.")
    return pooling


def pool_tokens(sequence_output, padding_mask, pooling="mean", normalize=True):
    """Pools `(batch, length, hidden)` token states over the real tokens, in float32.

    The pooling of sentence-transformers' `Pooling` module (Reimers &
    Gurevych 2019, "Sentence-BERT", section 3): "mean" is
    `sum(h * mask) / max(sum(mask), 1e-9)`, "max" the largest value of each
    feature over the real tokens (padded positions are set to -1e9 first),
    "cls" the first token's state (`[CLS]`'s; not BERT's tanh pooler).
    `normalize` then divides by the L2 norm (at least 1e-12), as
    sentence-transformers' `Normalize` module does, so that a dot product is
    the cosine similarity.

    Args:
        sequence_output: float tensor `(batch_size, length, hidden_size)`,
            any float dtype (cast to float32 first); with "cls", `length`
            may be 1 (only `[CLS]` computed).
        padding_mask: `(batch_size, length)` of int, bool or float, nonzero
            for real tokens (the length of the encoder's input).
        pooling: one of `POOLING_MODES`.
        normalize: bool, L2-normalise each embedding.

    Returns:
        float32 `(batch_size, hidden_size)`.

    Raises:
        ValueError: an unknown `pooling` (naming it and the allowed values).
    """
    _check_pooling(pooling)
    hidden = ops.cast(sequence_output, "float32")
    if pooling == "cls":
        pooled = hidden[:, 0, :]
    else:
        mask = ops.expand_dims(ops.cast(ops.not_equal(padding_mask, 0), "float32"), -1)
        if pooling == "mean":
            total = ops.sum(hidden * mask, axis=1)
            pooled = total / ops.maximum(ops.sum(mask, axis=1), _MEAN_EPSILON)
        else:
            pooled = ops.max(ops.where(mask > 0, hidden, _MAX_FILL), axis=1)
    if normalize:
        norm = ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))
        pooled = pooled / ops.maximum(norm, _NORM_EPSILON)
    return pooled


@keras.saving.register_keras_serializable(package="kbert")
class BertTextEmbedder(BertTaskModel):
    """`BertEncoder` -> pooling over real tokens -> optional L2 normalisation.

    A sentence-embedding model as sentence-transformers builds one
    (Reimers & Gurevych 2019, "Sentence-BERT: Sentence Embeddings using
    Siamese BERT-Networks", section 3): the encoder's last hidden states are
    pooled over the tokens that `padding_mask` marks as real, then (with
    `normalize=True`) divided by their L2 norm, so the dot product of two
    embeddings is their cosine similarity. For models trained this way
    (e.g. sentence-transformers/all-MiniLM-L6-v2: mean pooling, normalised)
    these embeddings, not BERT's `pooled_output`, are what the model was
    trained to produce. With "cls" pooling the encoder's last block computes
    only `[CLS]` (as `BertEncoder.pooled_output` does): the same numbers for
    less work.

    Inputs (dict, int32 `(batch_size, sequence_length)`): `token_ids`,
    `segment_ids`, `padding_mask`, as for `BertEncoder`.

    Output: float32 `(batch_size, hidden_size)` under every dtype policy
    (under `mixed_bfloat16`/`mixed_float16` the encoder computes in the low
    precision, its states are cast to float32 before pooling).

    Args:
        encoder: a `kbert.models.BertEncoder` (e.g. from `kbert.checkpoints.load`).
        pooling: "mean" (average of the real tokens' states, sentence-transformers'
            default), "cls" (the `[CLS]` token's state) or "max" (feature-wise
            maximum over real tokens).
        normalize: bool, L2-normalise the embeddings (default True).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Raises:
        ValueError: `encoder` is not a `BertEncoder`, or an unknown `pooling`
            (naming it and the allowed values).
        TypeError: a `normalize` that is not a bool.

    Example:
    >>> embedder = BertTextEmbedder.from_checkpoint(MINILM)  # doctest: +SKIP
    >>> preprocessor = BertTextPreprocessor(load_tokenizer(MINILM), 256)  # doctest: +SKIP
    >>> embedder(preprocessor(["A man plays a guitar."])).shape  # doctest: +SKIP
    TensorShape([1, 384])
    """

    def __init__(self, encoder, pooling="mean", normalize=True, **kwargs):
        self._check_encoder(encoder)
        _check_pooling(pooling)
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool; received {normalize!r}.")
        # === Functional graph ===
        inputs = self._encoder_inputs()
        padding_mask = inputs["padding_mask"]
        x = encoder.embeddings(inputs["token_ids"], inputs["segment_ids"])
        for block in encoder.transformer_layers[:-1]:
            x = block(x, padding_mask=padding_mask)
        # "cls" reads position 0 only: the last block computes just that row.
        x = encoder.transformer_layers[-1](
            x, padding_mask=padding_mask, output_length=1 if pooling == "cls" else None
        )
        embeddings = pool_tokens(x, padding_mask, pooling, normalize)
        super().__init__(inputs=inputs, outputs=embeddings, **kwargs)
        self.dtype_policy = encoder.dtype_policy  # the encoder's, not the global one
        # === Config ===
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def _head_config(self):
        return {"pooling": self.pooling, "normalize": self.normalize}

    @classmethod
    def from_checkpoint(cls, source, pooling="mean", normalize=True, dtype=None, **kwargs):
        """Builds an embedder on any checkpoint `kbert.checkpoints.load` reads.

        Args:
            source: a HuggingFace folder, Google TF1 or Model Garden
                checkpoint, or keras-hub backbone (see `kbert.checkpoints.load`).
            pooling, normalize: as in the constructor; the defaults ("mean",
                True) are all-MiniLM-L6-v2's and most sentence-transformers
                models' (see their `1_Pooling/config.json`).
            dtype: Keras dtype policy of the encoder (e.g. "mixed_bfloat16");
                the embeddings are float32 either way.
            **kwargs: `keras.Model` arguments (`name`).

        Returns:
            `BertTextEmbedder`. Tokenize for it with
            `kbert.checkpoints.load_tokenizer(source)`.

        Raises:
            FileNotFoundError, ValueError, CheckpointMismatchError: as
                `kbert.checkpoints.load`; ValueError for a bad `pooling`.
        """
        _check_pooling(pooling)
        from kbert.checkpoints import load

        return cls(load(source, dtype=dtype), pooling=pooling, normalize=normalize, **kwargs)
