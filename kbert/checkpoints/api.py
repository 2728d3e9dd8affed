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
    incomplete = huggingface.describe_incomplete_folder(path)
    if incomplete:
        raise ValueError(incomplete)
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
        config = config or huggingface.read_config(source)  # fails fast on non-BERT
        weights = huggingface.to_canonical(huggingface.read_state_dict(source))
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
        lowercase: the tokenizer's casing, recorded with the vocabulary as
            `tokenizer_config.json` (`do_lower_case`) in both formats.

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
            with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"do_lower_case": lowercase}, f)
        return prefix
    raise ValueError(f"Unknown format {format!r}; save writes 'huggingface' or 'google'.")


def to_keras_hub(model):
    """Converts a kbert model to keras-hub: `(BertBackbone, MaskedLMHead or None)`.

    The head is returned for a `BertPretrainer` (keras-hub has no NSP head, so
    `cls/seq_relationship` is not carried over). keras-hub computes tanh GELU
    whatever the kbert config says.
    """
    from kbert.checkpoints import keras_hub_bert

    encoder = model.encoder if isinstance(model, BertPretrainer) else model
    return keras_hub_bert.from_canonical(canonical.read_model(model), encoder.bert_config)


def _vocabulary_is_cased(tokens):
    """True when a BERT vocabulary holds upper-case word pieces (cased models do)."""
    words = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    return sum(any(c.isupper() for c in t) for t in words) > 0.01 * len(words)


def load_tokenizer(path, lowercase=None):
    """Builds a `kbert.text.BertTokenizer` from a checkpoint folder's `vocab.txt`.

    Casing: `lowercase` when given; else `do_lower_case` from a
    `tokenizer_config.json` beside the vocabulary (HuggingFace, and folders
    written by `save`); else inferred from the vocabulary itself (a cased BERT
    vocabulary holds upper-case word pieces, an uncased one none), since
    Google's releases record casing only in their folder names.

    Args:
        path: a folder, or a checkpoint prefix/file inside one.
        lowercase: optional bool overriding the above.

    Raises:
        FileNotFoundError: no vocab.txt there.
    """
    from kbert.text import BertTokenizer, load_vocabulary

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.exists(vocab):
        raise FileNotFoundError(f"No vocab.txt for {path} (looked in {folder}).")
    if lowercase is None:
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                values = json.load(f)
            if "do_lower_case" in values:
                lowercase = bool(values["do_lower_case"])
        if lowercase is None:
            lowercase = not _vocabulary_is_cased(load_vocabulary(vocab))
    return BertTokenizer(vocab, lowercase=lowercase)
