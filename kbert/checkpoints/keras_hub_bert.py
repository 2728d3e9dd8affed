"""keras-hub `BertBackbone` (+ `MaskedLMHead`) to and from the canonical layout.

keras-hub keeps attention projections as `EinsumDense` kernels of shape
`(hidden, heads, head_size)` (query/key/value) and `(heads, head_size,
hidden)` (output); these are reshaped to and from Google's `(hidden, hidden)`.
keras-hub's BERT always uses the tanh GELU (`gelu_approximate`) and
LayerNorm epsilon 1e-12.
"""

import numpy as np

from kbert.checkpoints.canonical import (
    CheckpointMismatchError,
    from_einsum,
    match_variables,
    to_einsum,
)
from kbert.layers.activations import get_activation
from kbert.models.bert_config import BertConfig

_RULES = [
    (r"token_embedding/embeddings", "bert/embeddings/word_embeddings"),
    (r"segment_embedding/embeddings", "bert/embeddings/token_type_embeddings"),
    (r"position_embedding/embeddings", "bert/embeddings/position_embeddings"),
    (r"embeddings_layer_norm/(gamma|beta)", "bert/embeddings/LayerNorm/{0}"),
    (r"transformer_layer_(\d+)/self_attention_layer/(query|key|value)/(kernel|bias)",
     "bert/encoder/layer_{0}/attention/self/{1}/{2}"),
    (r"transformer_layer_(\d+)/self_attention_layer/attention_output/(kernel|bias)",
     "bert/encoder/layer_{0}/attention/output/dense/{1}"),
    (r"transformer_layer_(\d+)/self_attention_layer_norm/(gamma|beta)",
     "bert/encoder/layer_{0}/attention/output/LayerNorm/{1}"),
    (r"transformer_layer_(\d+)/feedforward_intermediate_dense/(kernel|bias)",
     "bert/encoder/layer_{0}/intermediate/dense/{1}"),
    (r"transformer_layer_(\d+)/feedforward_output_dense/(kernel|bias)",
     "bert/encoder/layer_{0}/output/dense/{1}"),
    (r"transformer_layer_(\d+)/feedforward_layer_norm/(gamma|beta)",
     "bert/encoder/layer_{0}/output/LayerNorm/{1}"),
    (r"pooled_dense/(kernel|bias)", "bert/pooler/dense/{0}"),
]
_HEAD_RULES = [
    (r"intermediate_dense/(kernel|bias)", "cls/predictions/transform/dense/{0}"),
    (r"intermediate_layer_norm/(gamma|beta)", "cls/predictions/transform/LayerNorm/{0}"),
    (r"output_bias", "cls/predictions/output_bias"),
]


# BertConfig field <-> keras-hub BertBackbone argument/attribute.
_FIELDS = (
    ("vocab_size", "vocabulary_size"),
    ("num_hidden_layers", "num_layers"),
    ("num_attention_heads", "num_heads"),
    ("hidden_size", "hidden_dim"),
    ("intermediate_size", "intermediate_dim"),
    ("hidden_dropout_prob", "dropout"),
    ("max_position_embeddings", "max_sequence_length"),
    ("type_vocab_size", "num_segments"),
)


def build_backbone(config, dtype=None):
    """A randomly initialised keras-hub `BertBackbone` with the sizes of `config`."""
    import keras_hub

    kwargs = {hub: getattr(config, ours) for ours, hub in _FIELDS}
    return keras_hub.models.BertBackbone(**kwargs, dtype=dtype)


def config_from_backbone(backbone, hidden_act="gelu_approximate"):
    """The `BertConfig` of a keras-hub `BertBackbone` (hidden_act: keras-hub's tanh GELU;
    one dropout rate for both hidden states and attention; LayerNorm epsilon 1e-12)."""
    values = {ours: getattr(backbone, hub) for ours, hub in _FIELDS}
    return BertConfig(
        **values,
        hidden_act=hidden_act,
        attention_probs_dropout_prob=backbone.dropout,
        layer_norm_eps=1e-12,
    )


def to_canonical(backbone, masked_lm_head=None):
    """Reads a keras-hub `BertBackbone` (and optional `MaskedLMHead`) as a canonical dict.

    Raises:
        CheckpointMismatchError: variables the map does not know (listed).
    """
    variables, unknown = match_variables(backbone.weights, _RULES)
    if masked_lm_head is not None:
        head, head_unknown = match_variables(masked_lm_head.weights, _HEAD_RULES + _RULES[:1])
        variables.update({k: v for k, v in head.items() if k.startswith("cls/")})
        unknown += head_unknown
    if unknown:
        raise CheckpointMismatchError(f"Unrecognised keras-hub variables: {sorted(set(unknown))}")
    return {
        name: from_einsum(name, np.asarray(variable.numpy(), np.float32), backbone.hidden_dim)
        for name, variable in variables.items()
    }


def from_canonical(weights, config):
    """Builds a keras-hub `BertBackbone` (and `MaskedLMHead` if `weights` has `cls/`).

    The backbone computes tanh GELU whatever `config.hidden_act` says (keras-hub
    has no exact-GELU option), so its outputs match a kbert model only when
    `hidden_act` is "gelu_approximate".

    Returns:
        (backbone, masked_lm_head or None).

    Raises:
        CheckpointMismatchError: missing, unused or misshapen weights (listed).
    """
    import keras_hub

    backbone = build_backbone(config)
    head = None
    layers = [(backbone, _RULES)]
    if any(name.startswith("cls/predictions/") for name in weights):
        head = keras_hub.layers.MaskedLMHead(
            token_embedding=backbone.token_embedding,
            intermediate_activation=get_activation(config.hidden_act),
            layer_norm_epsilon=config.layer_norm_eps,
        )
        head.build((None, None, config.hidden_size), (None, None))
        layers.append((head, _HEAD_RULES))
    targets = {}
    for layer, rules in layers:
        found, _ = match_variables(layer.weights, rules)
        targets.update(found)
    usable = {k: v for k, v in weights.items() if not k.startswith("cls/seq_relationship")}
    missing = sorted(set(targets) - set(usable))
    unused = sorted(set(usable) - set(targets))
    shapes = [
        f"{name}: {np.shape(usable[name])} vs {tuple(var.shape)}"
        for name, var in targets.items()
        if name in usable and np.size(usable[name]) != int(np.prod(var.shape))
    ]
    if missing or unused or shapes:
        raise CheckpointMismatchError(
            f"Cannot build the keras-hub model: missing {missing}, unused {unused}, "
            f"shape mismatches {shapes}."
        )
    for name, variable in targets.items():
        variable.assign(to_einsum(name, usable[name], tuple(variable.shape)).astype(variable.dtype))
    return backbone, head
