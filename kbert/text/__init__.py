"""In-graph text processing for BERT (tensorflow-text): tokenizer, packer, vocabulary."""

from kbert.text.bert_packer import BertPacker
from kbert.text.bert_text_preprocessor import BertTextPreprocessor
from kbert.text.bert_tokenizer import BertTokenizer
from kbert.text.bert_word_packer import BertWordPacker
from kbert.text.vocabulary import (
    SPECIAL_TOKENS,
    build_vocabulary,
    load_vocabulary,
    write_vocabulary,
)

__all__ = [
    "SPECIAL_TOKENS",
    "BertPacker",
    "BertTextPreprocessor",
    "BertTokenizer",
    "BertWordPacker",
    "build_vocabulary",
    "load_vocabulary",
    "write_vocabulary",
]
