"""Reusable BERT layers (Keras 3, `keras.ops` only)."""

from kbert.layers.activations import get_activation, training_activation
from kbert.layers.bert_embeddings import BertEmbeddings
from kbert.layers.fast_dropout import FastDropout
from kbert.layers.masked_lm_head import MaskedLMHead
from kbert.layers.position_embedding import PositionEmbedding
from kbert.layers.transformer_encoder_block import TransformerEncoderBlock

__all__ = [
    "BertEmbeddings",
    "FastDropout",
    "MaskedLMHead",
    "PositionEmbedding",
    "TransformerEncoderBlock",
    "get_activation",
    "training_activation",
]
