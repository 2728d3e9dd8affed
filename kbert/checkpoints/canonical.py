"""The canonical weight layout every converter goes through: Google's TF1 names.

A "canonical dict" maps google-research/bert checkpoint names
(`bert/encoder/layer_3/attention/self/query/kernel`, ...) to float32 NumPy
arrays in Google's shapes (dense kernels `(in, out)`,
`cls/seq_relationship/output_weights` `(2, hidden_size)`). Each format
converter only maps its own names to and from these, as
tf-models' `tf1_bert_checkpoint_converter_lib` does.
"""

import re

import numpy as np

ENCODER_PREFIX = "bert/"
HEAD_PREFIX = "cls/"


class CheckpointMismatchError(ValueError):
    """Weights and model disagree: missing, unexpected or misshapen variables (all named)."""


def _block_names(i):
    p = f"bert/encoder/layer_{i}/"
    return {
        "query": p + "attention/self/query/",
        "key": p + "attention/self/key/",
        "value": p + "attention/self/value/",
        "attention_output": p + "attention/output/dense/",
        "attention_layer_norm": p + "attention/output/LayerNorm/",
        "intermediate": p + "intermediate/dense/",
        "output_dense": p + "output/dense/",
        "output_layer_norm": p + "output/LayerNorm/",
    }


def encoder_variables(encoder):
    """Maps canonical names to the variables of a `kbert.models.BertEncoder`.

    Returns:
        dict name -> (Keras variable, transpose: bool). `transpose` is True
        where kbert stores the transpose of Google's array (none for the
        encoder; kept for a uniform interface with `pretrainer_variables`).
    """
    e = encoder.embeddings
    names = {
        "bert/embeddings/word_embeddings": e.token_embedding.embeddings,
        "bert/embeddings/token_type_embeddings": e.segment_embedding.embeddings,
        "bert/embeddings/position_embeddings": e.position_embedding.embeddings,
        "bert/embeddings/LayerNorm/gamma": e.layer_norm.gamma,
        "bert/embeddings/LayerNorm/beta": e.layer_norm.beta,
        "bert/pooler/dense/kernel": encoder.pooler.kernel,
        "bert/pooler/dense/bias": encoder.pooler.bias,
    }
    for i, block in enumerate(encoder.transformer_layers):
        for attr, prefix in _block_names(i).items():
            layer = getattr(block, attr)
            if attr.endswith("layer_norm"):
                names[prefix + "gamma"] = layer.gamma
                names[prefix + "beta"] = layer.beta
            else:
                names[prefix + "kernel"] = layer.kernel
                names[prefix + "bias"] = layer.bias
    return {name: (variable, False) for name, variable in names.items()}


def pretrainer_variables(pretrainer):
    """Like `encoder_variables`, plus the `cls/` heads of a `BertPretrainer`."""
    names = encoder_variables(pretrainer.encoder)
    head = pretrainer.masked_lm_head
    nsp = pretrainer.next_sentence_head
    names.update(
        {
            "cls/predictions/transform/dense/kernel": (head.transform.kernel, False),
            "cls/predictions/transform/dense/bias": (head.transform.bias, False),
            "cls/predictions/transform/LayerNorm/gamma": (head.layer_norm.gamma, False),
            "cls/predictions/transform/LayerNorm/beta": (head.layer_norm.beta, False),
            "cls/predictions/output_bias": (head.output_bias, False),
            # Google stores the NSP weights as (2, hidden); Keras Dense as (hidden, 2).
            "cls/seq_relationship/output_weights": (nsp.kernel, True),
            "cls/seq_relationship/output_bias": (nsp.bias, False),
        }
    )
    return names


def model_variables(model):
    """Canonical name map of a `BertEncoder` or `BertPretrainer`."""
    from kbert.models import BertEncoder, BertPretrainer

    if isinstance(model, BertPretrainer):
        return pretrainer_variables(model)
    if isinstance(model, BertEncoder):
        return encoder_variables(model)
    raise TypeError(
        f"Expected a kbert BertEncoder or BertPretrainer; received {type(model).__name__}."
    )


def read_model(model):
    """Returns the canonical dict (float32 NumPy arrays) of a kbert model."""
    out = {}
    for name, (variable, transpose) in model_variables(model).items():
        value = np.asarray(variable.numpy(), np.float32)
        out[name] = value.T if transpose else value
    return out


def assign_model(model, weights, allow_unused_prefixes=()):
    """Assigns a canonical dict to a kbert model, all or nothing.

    Args:
        model: `BertEncoder` or `BertPretrainer`.
        weights: dict canonical name -> array.
        allow_unused_prefixes: names starting with these may be left unused
            (e.g. `("cls/",)` when loading only the encoder of a pretraining
            checkpoint).

    Raises:
        CheckpointMismatchError: listing every missing name, every unused name
            (outside `allow_unused_prefixes`) and every shape mismatch; nothing
            is assigned in that case.
    """
    targets = model_variables(model)
    missing = sorted(set(targets) - set(weights))
    unused = sorted(
        name
        for name in set(weights) - set(targets)
        if not name.startswith(tuple(allow_unused_prefixes))
    )
    shapes = []
    for name, (variable, transpose) in targets.items():
        if name in weights:
            shape = tuple(np.shape(weights[name]))
            expected = tuple(variable.shape)[::-1] if transpose else tuple(variable.shape)
            if shape != expected:
                shapes.append(f"{name}: checkpoint {shape}, model {expected}")
    if missing or unused or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {missing}")
        if unused:
            parts.append(f"in the checkpoint but not in the model: {unused}")
        if shapes:
            parts.append(f"shape mismatches: {shapes}")
        raise CheckpointMismatchError("Cannot load weights; " + "; ".join(parts))
    for name, (variable, transpose) in targets.items():
        value = np.asarray(weights[name], np.float32)
        variable.assign((value.T if transpose else value).astype(variable.dtype))


_EINSUM_QKV = ("self/query/kernel", "self/key/kernel", "self/value/kernel")
_EINSUM_QKV_BIAS = ("self/query/bias", "self/key/bias", "self/value/bias")


def from_einsum(name, value, hidden_size):
    """Reshapes an `EinsumDense` attention weight to Google's dense layout.

    query/key/value kernels `[H, N, Hd] -> [H, N*Hd]`, their biases
    `[N, Hd] -> [N*Hd]`, the output kernel `[N, Hd, H] -> [N*Hd, H]` (keras-hub
    and Model Garden both use these). Other weights pass through.
    """
    if name.endswith(_EINSUM_QKV) or name.endswith("attention/output/dense/kernel"):
        return np.reshape(value, (hidden_size, hidden_size))
    if name.endswith(_EINSUM_QKV_BIAS):
        return np.reshape(value, (hidden_size,))
    return value


def to_einsum(name, value, shape):
    """Inverse of `from_einsum`: reshapes a canonical array to an EinsumDense `shape`."""
    value = np.asarray(value, np.float32)
    if value.size != int(np.prod(shape)):
        raise CheckpointMismatchError(f"{name}: {value.shape} cannot fill shape {shape}.")
    return np.reshape(value, shape)


def match_variables(variables, rules, name_of=lambda v: v.path):
    """Maps canonical names to `variables` by regex rules on the end of their names.

    Args:
        variables: iterable of variables.
        rules: list of `(pattern, template)`; a variable whose name ends with
            `pattern` (after a `/` or at the start) gets the canonical name
            `template.format(*groups)`.
        name_of: callable giving a variable's name (default: Keras `path`).

    Returns:
        (dict canonical name -> variable, list of unmatched names).
    """
    out, unknown = {}, []
    for variable in variables:
        name = name_of(variable)
        for pattern, template in rules:
            match = re.search(r"(?:^|/)" + pattern + r"$", name)
            if match:
                out[template.format(*match.groups())] = variable
                break
        else:
            unknown.append(name)
    return out, unknown
