"""`tf.data` pipelines for BERT."""

from kbert.data.corpus import merge_short_documents, read_documents, write_default_corpus
from kbert.data.pretraining import (
    FEATURE_NAMES,
    MaskedLMMasker,
    PretrainingDataConfig,
    build_pretraining_dataset,
    create_sentence_pairs,
    split_features_for_fit,
    tokenize_documents,
)

__all__ = [
    "FEATURE_NAMES",
    "MaskedLMMasker",
    "PretrainingDataConfig",
    "build_pretraining_dataset",
    "create_sentence_pairs",
    "merge_short_documents",
    "read_documents",
    "split_features_for_fit",
    "tokenize_documents",
    "write_default_corpus",
]
