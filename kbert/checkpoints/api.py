"""One entry point for users: `load` any supported checkpoint, `save` to HF or Google layout."""

import json
import os

from kbert.checkpoints import canonical, google, huggingface
from kbert.models.bert_config import BertConfig
from kbert.models.bert_encoder import BertEncoder
from kbert.models.bert_pretrainer import BertPretrainer

FORMATS = ("huggingface", "google", "model_garden", "keras_hub")


def detect_format(source):
    """Names the format of `source`: a path, or a keras-hub `BertBackbone` object.

    Returns:
        one of `FORMATS`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an existing path in no known format (what was looked for is listed).
    """
    if not isinstance(source, (str, os.PathLike)):
        if type(source).__name__ == "BertBackbone":
            return "keras_hub"
        raise ValueError(f"Cannot load a {type(source).__name__}; pass a path or a keras-hub BertBackbone.")
    path = os.fspath(source)
    if huggingface.is_huggingface_folder(path):
        return "huggingface"
    exists = os.path.exists(path) or os.path.exists(path + ".index")
    if not exists:
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        prefix = google.resolve_prefix(path)
    except FileNotFoundError:
        prefix = None
    if prefix and google.is_google_checkpoint(prefix):
        return "google"
    if prefix:
        from kbert.checkpoints import model_garden

        if model_garden.is_model_garden_checkpoint(prefix):
            return "model_garden"
    raise ValueError(
        f"{path} is not a HuggingFace folder (config.json + model.safetensors or "
        "pytorch_model.bin), a Google BERT checkpoint (bert/embeddings/... variables) or a "
        "Model Garden BertEncoder checkpoint."
    )


def _find_config(path, names=("bert_config.json", "config.json")):
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return BertConfig.from_json_file(candidate)
    raise FileNotFoundError(
        f"No {' or '.join(names)} beside {path}; pass `config=` (a BertConfig or its path)."
    )


def read_canonical(source, config=None, hidden_act=None):
    """Reads `source` into `(canonical dict, BertConfig)`.

    Args:
        source: HF folder, Google checkpoint prefix/folder, Model Garden
            checkpoint prefix/folder, or a keras-hub `BertBackbone` (or a
            `(backbone, masked_lm_head)` tuple).
        config: optional `BertConfig` or path; required where the format
            carries none beside the weights (Google/Model Garden without a
            `bert_config.json`).
        hidden_act: override the activation (keras-hub always reports
            "gelu_approximate"; pass "gelu" for checkpoints trained with
            exact GELU).
    """
    if isinstance(config, (str, os.PathLike)):
        config = BertConfig.from_json_file(os.fspath(config))
    head = None
    if isinstance(source, tuple):
        source, head = source
    fmt = detect_format(source)
    if fmt == "huggingface":
        weights = huggingface.to_canonical(huggingface.read_state_dict(source))
        config = config or huggingface.read_config(source)
    elif fmt == "google":
        weights = google.read_checkpoint(source)
        config = config or _find_config(os.fspath(source))
    elif fmt == "model_garden":
        from kbert.checkpoints import model_garden

        config = config or _find_config(os.fspath(source))
        weights = model_garden.read_checkpoint(source, config)
    else:
        from kbert.checkpoints import keras_hub_bert

        weights = keras_hub_bert.to_canonical(source, head)
        config = config or keras_hub_bert.config_from_backbone(source)
    if hidden_act:
        config = BertConfig(**{**config.to_dict(), "hidden_act": hidden_act})
    return weights, config


def load(source, pretraining=False, config=None, hidden_act=None, dtype=None):
    """Loads any supported BERT checkpoint into a kbert model.

    Detects the format of `source` (see `detect_format`), builds the model
    from the checkpoint's config and assigns every weight, strictly: a
    missing, unexpected or misshapen variable raises an error naming it.

    Args:
        source: a HuggingFace folder (`config.json` + `model.safetensors` or
            `pytorch_model.bin`), a Google TF1 checkpoint prefix or folder
            (with `bert_config.json` beside it), a Model Garden
            `BertEncoder` checkpoint (needs the `modelgarden` extra), or a
            keras-hub `BertBackbone` object (or `(backbone, masked_lm_head)`).
        pretraining: bool, return a `BertPretrainer` with the checkpoint's
            masked-LM and next-sentence heads (the checkpoint must have them).
        config: optional `BertConfig` or JSON path overriding the one found.
        hidden_act: optional activation override (see `read_canonical`).
        dtype: Keras dtype policy of the returned model (e.g.
            "mixed_bfloat16"); weights are stored in the policy's variable dtype.

    Returns:
        `kbert.models.BertEncoder` (dict in: `token_ids`, `segment_ids`,
        `padding_mask`; dict out: `sequence_output`, `pooled_output`) or
        `kbert.models.BertPretrainer`.

    Raises:
        FileNotFoundError, ValueError: no or unknown checkpoint, missing config.
        CheckpointMismatchError: names and shapes that do not match (listed),
            or `pretraining=True` on a checkpoint without heads.
    """
    weights, config = read_canonical(source, config, hidden_act)
    encoder = BertEncoder.from_bert_config(config, dtype=dtype)
    if pretraining:
        heads = [n for n in weights if n.startswith("cls/")]
        if not heads:
            raise canonical.CheckpointMismatchError(
                f"{source} holds no pretraining heads (cls/...); load it with pretraining=False."
            )
        model = BertPretrainer(encoder)
        canonical.assign_model(model, weights)
        return model
    canonical.assign_model(encoder, weights, allow_unused_prefixes=("cls/",))
    return encoder


def save(model, path, format="huggingface", vocab_path=None, lowercase=True):
    """Writes a kbert model's weights in another framework's layout.

    Args:
        model: `BertEncoder` or `BertPretrainer` (heads are written too).
        path: for "huggingface" a folder (`config.json`, `model.safetensors`,
            and `vocab.txt` + `tokenizer_config.json` when `vocab_path` is
            given) that `transformers.BertModel`/`BertForPreTraining` loads;
            for "google" a checkpoint prefix (`bert_model.ckpt`), with
            `bert_config.json` (and `vocab.txt`) written beside it.
        format: "huggingface" or "google".
        vocab_path: optional vocabulary to ship with the weights.
        lowercase: the tokenizer's casing, recorded for HuggingFace.

    Returns:
        str, the folder or prefix written.

    Raises:
        ValueError: unknown format.
    """
    encoder = model.encoder if isinstance(model, BertPretrainer) else model
    weights = canonical.read_model(model)
    config = encoder.bert_config
    if format == "huggingface":
        huggingface.write_folder(weights, config, path, vocab_path, lowercase)
        return path
    if format == "google":
        prefix = google.write_checkpoint(weights, path)
        folder = os.path.dirname(os.path.abspath(path))
        config.to_json_file(os.path.join(folder, "bert_config.json"))
        if vocab_path:
            import shutil

            shutil.copyfile(vocab_path, os.path.join(folder, "vocab.txt"))
        return prefix
    raise ValueError(f"Unknown format {format!r}; save writes 'huggingface' or 'google'.")


def load_tokenizer(folder, lowercase=None):
    """Builds a `kbert.text.BertTokenizer` from a checkpoint folder's `vocab.txt`.

    Casing comes from HF `tokenizer_config.json` (`do_lower_case`) when
    present, else `lowercase` (default True).

    Raises:
        FileNotFoundError: no vocab.txt in `folder`.
    """
    from kbert.text import BertTokenizer

    folder = folder if os.path.isdir(folder) else os.path.dirname(os.path.abspath(folder))
    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.exists(vocab):
        raise FileNotFoundError(f"No vocab.txt in {folder}.")
    if lowercase is None:
        lowercase = True
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                lowercase = bool(json.load(f).get("do_lower_case", True))
    return BertTokenizer(vocab, lowercase=lowercase)
