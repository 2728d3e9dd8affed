"""BERT models: config, presets, functional encoder and pretrainer."""

from kbert.models.bert_config import BertConfig
from kbert.models.bert_encoder import INPUT_NAMES, BertEncoder
from kbert.models.bert_pretrainer import BertPretrainer
from kbert.models.presets import PRESETS, preset_config

__all__ = [
    "BertConfig",
    "BertEncoder",
    "BertPretrainer",
    "INPUT_NAMES",
    "PRESETS",
    "preset_config",
]
