"""TF Model Garden (tf-models-official) `BertEncoder`/`BertEncoderV2` checkpoints.

Needs the `modelgarden` extra. A Model Garden TF2 checkpoint is object-based,
so its keys follow Python attribute paths; this module rebuilds the Model
Garden encoder (tf_keras) with the given config, restores the checkpoint into
it, and maps its variable names (`transformer/layer_N/self_attention/query/
kernel`, ...) to the canonical layout. The tf_keras model is a temporary
reader only: it never becomes part of a kbert model.
"""

import re

import numpy as np
import tensorflow as tf

from kbert.checkpoints.canonical import (
    CheckpointMismatchError,
    from_einsum,
    match_variables,
    to_einsum,
)

_RULES = [
    (r"word_embeddings/embeddings", "bert/embeddings/word_embeddings"),
    (r"type_embeddings/embeddings", "bert/embeddings/token_type_embeddings"),
    (r"position_embedding/embeddings", "bert/embeddings/position_embeddings"),
    (r"embeddings/layer_norm/(gamma|beta)", "bert/embeddings/LayerNorm/{0}"),
    (r"transformer/layer_(\d+)/self_attention/(query|key|value)/(kernel|bias)",
     "bert/encoder/layer_{0}/attention/self/{1}/{2}"),
    (r"transformer/layer_(\d+)/self_attention/attention_output/(kernel|bias)",
     "bert/encoder/layer_{0}/attention/output/dense/{1}"),
    (r"transformer/layer_(\d+)/self_attention_layer_norm/(gamma|beta)",
     "bert/encoder/layer_{0}/attention/output/LayerNorm/{1}"),
    (r"transformer/layer_(\d+)/intermediate/(kernel|bias)",
     "bert/encoder/layer_{0}/intermediate/dense/{1}"),
    (r"transformer/layer_(\d+)/output/(kernel|bias)", "bert/encoder/layer_{0}/output/dense/{1}"),
    (r"transformer/layer_(\d+)/output_layer_norm/(gamma|beta)",
     "bert/encoder/layer_{0}/output/LayerNorm/{1}"),
    (r"pooler_transform/(kernel|bias)", "bert/pooler/dense/{0}"),
]
_MARKERS = re.compile(
    r"(_transformer_layers/\d+|layer_with_weights-\d+)/_attention_layer/_query_dense/kernel/"
)


def is_model_garden_checkpoint(prefix):
    """True when the checkpoint at `prefix` holds a Model Garden BERT encoder."""
    try:
        return any(_MARKERS.search(name) for name, _ in tf.train.list_variables(prefix))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError):
        return False


def _build(config, version):
    from official.nlp.modeling import networks

    cls = networks.BertEncoderV2 if version == 2 else networks.BertEncoder
    encoder = cls(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_sequence_length=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        inner_dim=config.intermediate_size,
    )
    if version == 2:
        ids = tf.zeros((1, 2), tf.int32)
        encoder(dict(input_word_ids=ids, input_mask=ids, input_type_ids=ids))
    return encoder


def _variable_map(encoder):
    out, unknown = match_variables(encoder.weights, _RULES, lambda v: v.name.split(":")[0])
    if unknown:
        raise CheckpointMismatchError(f"Unrecognised Model Garden variables: {unknown}")
    return out


def _root_name(prefix):
    roots = {name.split("/")[0] for name, _ in tf.train.list_variables(prefix)}
    roots -= {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"}
    if len(roots) != 1:
        raise CheckpointMismatchError(
            f"Expected one top-level object in {prefix} (e.g. 'encoder'); found {sorted(roots)}."
        )
    return roots.pop()


def read_checkpoint(prefix, config):
    """Reads a Model Garden `BertEncoderV2` or `BertEncoder` checkpoint as a canonical dict.

    Args:
        prefix: checkpoint prefix or folder.
        config: `BertConfig` of the encoder.

    Raises:
        ImportError: tf-models-official is not installed (the `modelgarden` extra).
        CheckpointMismatchError: the checkpoint fits neither encoder class.
    """
    from kbert.checkpoints.google import resolve_prefix

    prefix = resolve_prefix(prefix)
    root = _root_name(prefix)
    errors = []
    for version in (2, 1):
        encoder = _build(config, version)
        status = tf.train.Checkpoint(**{root: encoder}).read(prefix)
        try:
            status.assert_existing_objects_matched()
            status.assert_consumed()
        except AssertionError as error:
            errors.append(f"BertEncoder{'V2' if version == 2 else ''}: {str(error)[:500]}")
            continue
        return {
            name: from_einsum(name, np.asarray(variable.numpy(), np.float32), config.hidden_size)
            for name, variable in _variable_map(encoder).items()
        }
    raise CheckpointMismatchError(
        f"{prefix} does not match a Model Garden BertEncoderV2 or BertEncoder of this "
        f"config: {errors}"
    )


def write_checkpoint(weights, config, prefix, version=2):
    """Writes the encoder part of a canonical dict as a Model Garden checkpoint.

    Saved as `tf.train.Checkpoint(encoder=BertEncoderV2 or BertEncoder)`, the
    layout tf-models' BERT tasks restore.

    Returns:
        str, the checkpoint path written.
    """
    encoder = _build(config, version)
    targets = _variable_map(encoder)
    missing = sorted(set(targets) - set(weights))
    if missing:
        raise CheckpointMismatchError(f"Weights missing for the Model Garden encoder: {missing}")
    for name, variable in targets.items():
        variable.assign(to_einsum(name, weights[name], tuple(variable.shape)))
    return tf.train.Checkpoint(encoder=encoder).write(prefix)
