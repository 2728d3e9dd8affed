"""HuggingFace BERT folders (`config.json`, `model.safetensors` or
`pytorch_model.bin`, `vocab.txt`) to and from the canonical layout.

Name map written from transformers' `BertModel`/`BertForPreTraining` module
structure (`modeling_bert.py`); `nn.Linear` stores `(out, in)`, so dense
weights are transposed. Both LayerNorm naming schemes (`weight`/`bias` and
the older `gamma`/`beta`) are read.
"""

import json
import os
import re

import numpy as np

from kbert.checkpoints.canonical import CheckpointMismatchError
from kbert.models.bert_config import BertConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
VOCAB_FILE = "vocab.txt"

# Buffers that are not weights.
_IGNORED = re.compile(r"^(bert\.)?embeddings\.position_ids$")

_ENCODER_RULES = [
    # (HF pattern without the optional "bert." prefix, canonical template, transpose)
    (r"embeddings\.word_embeddings\.weight", "bert/embeddings/word_embeddings", False),
    (r"embeddings\.token_type_embeddings\.weight", "bert/embeddings/token_type_embeddings", False),
    (r"embeddings\.position_embeddings\.weight", "bert/embeddings/position_embeddings", False),
    (r"embeddings\.LayerNorm\.(?:weight|gamma)", "bert/embeddings/LayerNorm/gamma", False),
    (r"embeddings\.LayerNorm\.(?:bias|beta)", "bert/embeddings/LayerNorm/beta", False),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.weight",
     "bert/encoder/layer_{0}/attention/self/{1}/kernel", True),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.bias",
     "bert/encoder/layer_{0}/attention/self/{1}/bias", False),
    (r"encoder\.layer\.(\d+)\.(attention\.output|intermediate|output)\.dense\.weight",
     "bert/encoder/layer_{0}/{1}/dense/kernel", True),
    (r"encoder\.layer\.(\d+)\.(attention\.output|intermediate|output)\.dense\.bias",
     "bert/encoder/layer_{0}/{1}/dense/bias", False),
    (r"encoder\.layer\.(\d+)\.(attention\.output|output)\.LayerNorm\.(?:weight|gamma)",
     "bert/encoder/layer_{0}/{1}/LayerNorm/gamma", False),
    (r"encoder\.layer\.(\d+)\.(attention\.output|output)\.LayerNorm\.(?:bias|beta)",
     "bert/encoder/layer_{0}/{1}/LayerNorm/beta", False),
    (r"pooler\.dense\.weight", "bert/pooler/dense/kernel", True),
    (r"pooler\.dense\.bias", "bert/pooler/dense/bias", False),
]
_HEAD_RULES = [
    (r"cls\.predictions\.transform\.dense\.weight", "cls/predictions/transform/dense/kernel", True),
    (r"cls\.predictions\.transform\.dense\.bias", "cls/predictions/transform/dense/bias", False),
    (r"cls\.predictions\.transform\.LayerNorm\.(?:weight|gamma)",
     "cls/predictions/transform/LayerNorm/gamma", False),
    (r"cls\.predictions\.transform\.LayerNorm\.(?:bias|beta)",
     "cls/predictions/transform/LayerNorm/beta", False),
    (r"cls\.predictions\.bias", "cls/predictions/output_bias", False),
    (r"cls\.seq_relationship\.weight", "cls/seq_relationship/output_weights", False),
    (r"cls\.seq_relationship\.bias", "cls/seq_relationship/output_bias", False),
]
# Copies of tied weights: checked against their originals, then dropped.
_TIED = {
    "cls.predictions.decoder.weight": "bert/embeddings/word_embeddings",
    "cls.predictions.decoder.bias": "cls/predictions/output_bias",
}


def _canonical_name(hf_name):
    name = hf_name[len("bert."):] if hf_name.startswith("bert.") else hf_name
    for pattern, template, transpose in _ENCODER_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            groups = [g.replace(".", "/") for g in match.groups()]
            return template.format(*groups), transpose
    for pattern, template, transpose in _HEAD_RULES:
        if re.fullmatch(pattern, hf_name):
            return template, transpose
    return None, False


def _has_weights(path):
    return any(
        os.path.exists(os.path.join(path, name))
        for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE)
    )


def is_huggingface_folder(path):
    """True when `path` is a folder with `config.json` and HF weights."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE)) and _has_weights(path)


def describe_incomplete_folder(path):
    """Says what a folder lacks to be a HuggingFace checkpoint, or None if it is not half of one."""
    if not os.path.isdir(path):
        return None
    has_config = os.path.exists(os.path.join(path, CONFIG_FILE))
    has_weights = _has_weights(path)
    if has_config and not has_weights:
        return (f"{path} has {CONFIG_FILE} but no weights ({SAFETENSORS_FILE}, "
                f"{SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE}).")
    if has_weights and not has_config:
        return f"{path} has HuggingFace weights but no {CONFIG_FILE}."
    return None


def read_state_dict(folder):
    """Returns the folder's weights as a dict of NumPy arrays.

    Reads `model.safetensors`, sharded safetensors (`model.safetensors.index.json`
    and its shards), or, failing those, `pytorch_model.bin` (needs `torch`;
    loaded with `weights_only=True`).

    Raises:
        FileNotFoundError: neither file exists.
        ImportError: only `pytorch_model.bin` exists and torch is not installed.
    """
    safetensors_path = os.path.join(folder, SAFETENSORS_FILE)
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file

        return load_file(safetensors_path)
    index_path = os.path.join(folder, SAFETENSORS_INDEX_FILE)
    if os.path.exists(index_path):
        from safetensors.numpy import load_file

        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(os.path.join(folder, shard)))
        return state
    pytorch_path = os.path.join(folder, PYTORCH_FILE)
    if os.path.exists(pytorch_path):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"{pytorch_path} needs torch to read; install torch or convert the "
                "folder to model.safetensors."
            ) from error
        state = torch.load(pytorch_path, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{folder} has neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}.")


def read_config(folder):
    """Reads the folder's `config.json` into a `BertConfig`.

    Raises:
        FileNotFoundError: no config.json.
        ValueError: `model_type` other than "bert", or unsupported values.
    """
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}.")
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"{path}: model_type={model_type!r}; kbert reads BERT checkpoints only.")
    return BertConfig.from_dict(values)


def to_canonical(state_dict):
    """Converts HF names/layouts to the canonical dict.

    Raises:
        CheckpointMismatchError: names that map to nothing (listed), or tied
            copies that differ from their originals.
    """
    out, unknown, tied = {}, [], {}
    for hf_name, value in state_dict.items():
        if _IGNORED.match(hf_name):
            continue
        if hf_name in _TIED:
            tied[hf_name] = value
            continue
        name, transpose = _canonical_name(hf_name)
        if name is None:
            unknown.append(hf_name)
            continue
        value = np.asarray(value, np.float32)
        out[name] = value.T if transpose else value
    if unknown:
        raise CheckpointMismatchError(f"Unrecognised HuggingFace weights: {sorted(unknown)}")
    for hf_name, value in tied.items():
        original = out.get(_TIED[hf_name])
        if original is not None and not np.array_equal(np.asarray(value, np.float32), original):
            raise CheckpointMismatchError(
                f"{hf_name} differs from {_TIED[hf_name]}; kbert ties them and cannot load "
                "an untied output layer."
            )
    return out


def from_canonical(weights, with_prefix):
    """Converts a canonical dict to HF names/layouts (`BertForPreTraining` with prefix)."""
    out = {}
    for name, value in weights.items():
        hf_name, transpose = _hf_name(name)
        if name.startswith("bert/") and with_prefix:
            hf_name = "bert." + hf_name
        out[hf_name] = np.ascontiguousarray(value.T if transpose else value, np.float32)
    return out


def _hf_name(canonical):
    parts = canonical.split("/")
    if canonical.startswith("cls/"):
        table = {
            "cls/predictions/transform/dense/kernel": ("cls.predictions.transform.dense.weight", True),
            "cls/predictions/transform/dense/bias": ("cls.predictions.transform.dense.bias", False),
            "cls/predictions/transform/LayerNorm/gamma": ("cls.predictions.transform.LayerNorm.weight", False),
            "cls/predictions/transform/LayerNorm/beta": ("cls.predictions.transform.LayerNorm.bias", False),
            "cls/predictions/output_bias": ("cls.predictions.bias", False),
            "cls/seq_relationship/output_weights": ("cls.seq_relationship.weight", False),
            "cls/seq_relationship/output_bias": ("cls.seq_relationship.bias", False),
        }
        return table[canonical]
    leaf = parts[-1]
    if parts[1] == "embeddings":
        if parts[2] == "LayerNorm":
            return f"embeddings.LayerNorm.{'weight' if leaf == 'gamma' else 'bias'}", False
        return f"embeddings.{parts[2]}.weight", False
    if parts[1] == "pooler":
        return f"pooler.dense.{'weight' if leaf == 'kernel' else 'bias'}", leaf == "kernel"
    # bert/encoder/layer_i/<module path>/<leaf>
    index = parts[2].split("_")[1]
    module = ".".join(parts[3:-1])
    if leaf in ("gamma", "beta"):
        suffix = "weight" if leaf == "gamma" else "bias"
    else:
        suffix = "weight" if leaf == "kernel" else "bias"
    return f"encoder.layer.{index}.{module}.{suffix}", leaf == "kernel"


_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_exact": "gelu", "gelu_approximate": "gelu_new"}


def write_folder(weights, config, folder, vocab_path=None, lowercase=None):
    """Writes a HuggingFace BERT folder that `transformers` loads, all or nothing.

    `BertForPreTraining` (names prefixed `bert.`) when `weights` hold `cls/`
    heads, else `BertModel`. The files are written into a hidden sibling
    folder and moved into `folder` at the end (`kbert.staging`), so a failure
    leaves nothing behind.

    Args:
        weights: canonical dict.
        config: `BertConfig`.
        folder: output folder (created; may exist if it holds none of the
            files written).
        vocab_path: optional `vocab.txt` to copy, with a `tokenizer_config.json`.
        lowercase: bool, the tokenizer's `do_lower_case` (required with
            `vocab_path`).

    Raises:
        FileExistsError: `folder` already holds one of the files (nothing is
            written).
    """
    from safetensors.numpy import save_file

    from kbert.checkpoints import tokenizer_files
    from kbert.staging import staged_folder

    names = [SAFETENSORS_FILE, CONFIG_FILE]
    if vocab_path:
        names += [tokenizer_files.VOCAB_FILE, tokenizer_files.TOKENIZER_CONFIG_FILE]
    pretraining = any(name.startswith("cls/") for name in weights)
    values = config.to_dict()
    values["hidden_act"] = _HF_ACTIVATIONS.get(values["hidden_act"], values["hidden_act"])
    values.update(
        {
            "architectures": ["BertForPreTraining" if pretraining else "BertModel"],
            "model_type": "bert",
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
        }
    )
    with staged_folder(folder, names) as stage:
        save_file(
            from_canonical(weights, with_prefix=pretraining),
            os.path.join(stage, SAFETENSORS_FILE),
            metadata={"format": "pt"},
        )
        with open(os.path.join(stage, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(values, f, indent=2, sort_keys=True)
        if vocab_path:
            tokenizer_files.write_tokenizer_files(stage, vocab_path, lowercase)
