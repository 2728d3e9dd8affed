"""Data for BERT: pretraining pipelines and fine-tuning readers (TSV, CoNLL, SQuAD)."""

from kbert.data.batching import batches_per_epoch, padded_batches_dataset, plan_batches
from kbert.data.classification import TextExamples, encode_texts, read_tsv, text_dataset
from kbert.data.conll import TaggedSentence, read_conll, read_conllu
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
from kbert.data.squad import (
    SquadExample,
    SquadFeatures,
    SquadWindow,
    create_squad_features,
    read_squad_examples,
)
from kbert.data.squad_postprocessing import postprocess_squad
from kbert.data.tagging import (
    IGNORE_LABEL,
    TaggingExamples,
    build_label_list,
    encode_tagged_sentences,
    ids_to_tags,
    tagging_dataset,
    word_predictions,
)

__all__ = [
    "FEATURE_NAMES",
    "IGNORE_LABEL",
    "MaskedLMMasker",
    "PretrainingDataConfig",
    "SquadExample",
    "SquadFeatures",
    "SquadWindow",
    "TaggedSentence",
    "TaggingExamples",
    "TextExamples",
    "batches_per_epoch",
    "build_label_list",
    "build_pretraining_dataset",
    "create_sentence_pairs",
    "create_squad_features",
    "encode_tagged_sentences",
    "encode_texts",
    "ids_to_tags",
    "merge_short_documents",
    "padded_batches_dataset",
    "plan_batches",
    "postprocess_squad",
    "read_conll",
    "read_conllu",
    "read_documents",
    "read_squad_examples",
    "read_tsv",
    "split_features_for_fit",
    "tagging_dataset",
    "text_dataset",
    "tokenize_documents",
    "word_predictions",
    "write_default_corpus",
]
