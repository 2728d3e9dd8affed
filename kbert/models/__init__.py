"""BERT models: config, presets, functional encoder, pretrainer and task models."""

from kbert.models.bert_classifier import BertClassifier
from kbert.models.bert_config import BertConfig
from kbert.models.bert_encoder import BertEncoder
from kbert.models.input_checks import INPUT_NAMES, InvalidIdsError
from kbert.models.bert_pretrainer import BertPretrainer
from kbert.models.bert_span_labeler import BertSpanLabeler
from kbert.models.bert_text_embedder import BertTextEmbedder
from kbert.models.bert_token_classifier import BertTokenClassifier
from kbert.models.presets import PRESETS, preset_config
from kbert.models.task_heads import inference_copy

__all__ = [
    "BertClassifier",
    "BertConfig",
    "BertEncoder",
    "BertPretrainer",
    "BertSpanLabeler",
    "BertTextEmbedder",
    "BertTokenClassifier",
    "INPUT_NAMES",
    "InvalidIdsError",
    "PRESETS",
    "inference_copy",
    "preset_config",
]
