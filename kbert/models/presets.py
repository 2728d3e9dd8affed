"""Architecture presets: BERT's released sizes and the 24 small BERTs.

Sizes follow Devlin et al. 2019 (BERT-Base L=12 H=768 A=12, BERT-Large L=24
H=1024 A=16) and Turc et al. 2019, "Well-Read Students Learn Better" (the 24
small BERTs, L in {2,4,6,8,10,12} x H in {128,256,512,768}, A = H/64,
intermediate 4H), with their published names tiny (L2 H128), mini (L4 H256),
small (L4 H512) and medium (L8 H512). Presets describe architectures only;
no weights are downloaded.
"""

from kbert.models.bert_config import BertConfig


def _arch(layers, hidden, heads=None):
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads or hidden // 64,
        "intermediate_size": 4 * hidden,
    }


PRESETS = {
    "bert_tiny": _arch(2, 128),
    "bert_mini": _arch(4, 256),
    "bert_small": _arch(4, 512),
    "bert_medium": _arch(8, 512),
    "bert_base": _arch(12, 768),
    "bert_large": _arch(24, 1024, 16),
}
for _layers in (2, 4, 6, 8, 10, 12):
    for _hidden in (128, 256, 512, 768):
        PRESETS[f"bert_L{_layers}_H{_hidden}"] = _arch(_layers, _hidden)


def preset_config(name, **overrides):
    """Returns the `BertConfig` of preset `name`, with `overrides` applied.

    Args:
        name: str, a key of `PRESETS`, e.g. "bert_tiny" or "bert_L4_H256".
        **overrides: `BertConfig` fields to change, e.g. `vocab_size=8000`.

    Raises:
        ValueError: unknown preset name (the message lists the known ones) or
            invalid override values.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {sorted(PRESETS)}.")
    return BertConfig(**{**PRESETS[name], **overrides})
