"""Data for BERT: pretraining pipelines and fine-tuning readers (TSV, CoNLL, SQuAD)."""

from kbert.data.batching import batches_per_epoch, padded_batches_dataset, plan_batches
from kbert.data.classification import TextExamples, encode_texts, read_tsv, text_dataset
from kbert.data.conll import TaggedSentence, read_conll, read_conllu
from kbert.data.corpus import (
    merge_short_documents,
    read_documents,
    write_default_corpus,
)
from kbert.data.pretraining import (
    FEATURE_NAMES,
    MaskedLMMasker,
    PretrainingDataConfig,
    build_pretraining_dataset,
    create_sentence_pairs,
    pack_and_mask_batches,
    split_features_for_fit,
    tokenize_documents,
    word_continuation_ids,
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
from kbert.data.tfrecord_writer import stream_documents, write_pretraining_tfrecords
from kbert.data.tfrecords import (
    check_pretraining_records,
    pretraining_tfrecord_dataset,
    tfrecord_files,
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
    "check_pretraining_records",
    "create_sentence_pairs",
    "create_squad_features",
    "encode_tagged_sentences",
    "encode_texts",
    "ids_to_tags",
    "merge_short_documents",
    "pack_and_mask_batches",
    "padded_batches_dataset",
    "plan_batches",
    "postprocess_squad",
    "pretraining_tfrecord_dataset",
    "read_conll",
    "read_conllu",
    "read_documents",
    "read_squad_examples",
    "read_tsv",
    "split_features_for_fit",
    "stream_documents",
    "tagging_dataset",
    "text_dataset",
    "tfrecord_files",
    "tokenize_documents",
    "word_continuation_ids",
    "word_predictions",
    "write_default_corpus",
    "write_pretraining_tfrecords",
]
