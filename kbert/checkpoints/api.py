"""One entry point for users: `load` any supported checkpoint, `save` to HF or Google layout."""

import os

from kbert.checkpoints import canonical, google, huggingface, tokenizer_files
from kbert.models.bert_config import BertConfig
from kbert.models.bert_encoder import BertEncoder
from kbert.models.bert_pretrainer import BertPretrainer

FORMATS = ("huggingface", "google", "model_garden", "keras_hub", "keras")

# kbert's own `.keras` files, in the order a run folder is searched for them:
# `trainers.pretrain` writes pretrainer.keras + encoder.keras, `trainers.finetune` model.keras.
KERAS_RUN_FILES = ("pretrainer.keras", "encoder.keras", "model.keras")


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
    if _keras_file(path):
        return "keras"
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


def _keras_file(path, pretraining=False):
    """The kbert `.keras` file `path` names: itself, or the right one in a run folder; else None."""
    if os.path.isfile(path) and path.endswith(".keras"):
        return path
    if not os.path.isdir(path):
        return None
    names = KERAS_RUN_FILES if pretraining else KERAS_RUN_FILES[1:] + KERAS_RUN_FILES[:1]
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _read_keras_file(path, pretraining):
    """Reads a kbert `.keras` file (encoder, pretrainer or task model) as (canonical dict, config)."""
    import keras

    import kbert  # noqa: F401  (registers the classes the file names)

    file = _keras_file(path, pretraining)
    model = keras.saving.load_model(file, compile=False)  # weights only: no optimizer state
    if isinstance(model, (BertEncoder, BertPretrainer)):
        source = model
    elif isinstance(getattr(model, "encoder", None), BertEncoder):
        source = model.encoder  # a task model: its encoder
    else:
        raise TypeError(f"{file} holds a {type(model).__name__}, not a kbert BERT model.")
    encoder = source.encoder if isinstance(source, BertPretrainer) else source
    return canonical.read_model(source), encoder.bert_config


def _find_config(path, names=("bert_config.json", "config.json")):
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return BertConfig.from_json_file(candidate)
    raise FileNotFoundError(
        f"No {' or '.join(names)} beside {path}; pass `config=` (a BertConfig or its path)."
    )


def read_canonical(source, config=None, hidden_act=None, pretraining=False):
    """Reads `source` into `(canonical dict, BertConfig)`.

    Args:
        source: HF folder, Google checkpoint prefix/folder, Model Garden
            checkpoint prefix/folder, a kbert `.keras` file or run folder, or
            a keras-hub `BertBackbone` (or a `(backbone, masked_lm_head)` tuple).
        config: optional `BertConfig` or path; required where the format
            carries none beside the weights (Google/Model Garden without a
            `bert_config.json`).
        hidden_act: override the activation (keras-hub always reports
            "gelu_approximate"; pass "gelu" for checkpoints trained with
            exact GELU).
        pretraining: bool, prefer a run folder's `pretrainer.keras` (with
            heads) over its `encoder.keras`.
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
    elif fmt == "keras":
        weights, stored = _read_keras_file(os.fspath(source), pretraining)
        config = config or stored
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
            keras-hub `BertBackbone` object (or `(backbone, masked_lm_head)`),
            or a kbert `.keras` file (encoder, pretrainer or task model) or
            run folder (`pretrainer.keras`/`encoder.keras` of
            `trainers.pretrain`, `model.keras` of `trainers.finetune`).
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
    weights, config = read_canonical(source, config, hidden_act, pretraining)
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


def save(model, path, format="huggingface", vocab_path=None, lowercase=None):
    """Writes a kbert model's weights in another framework's layout, all or nothing.

    Everything is validated before anything is written; the files are then
    written into a hidden sibling folder and moved into place (see
    `kbert.staging`), so a failure leaves no partial checkpoint.

    Args:
        model: `BertEncoder` or `BertPretrainer` (heads are written too).
        path: for "huggingface" a folder (`config.json`, `model.safetensors`,
            and `vocab.txt` + `tokenizer_config.json` when `vocab_path` is
            given) that `transformers.BertModel`/`BertForPreTraining` loads;
            for "google" a checkpoint prefix (`out/bert_model.ckpt`; a folder
            path, existing or ending in "/", gets `bert_model.ckpt` in it), with
            `bert_config.json` (and `vocab.txt`, `tokenizer_config.json`)
            written beside it, and a `checkpoint` file with relative paths
            (the folder can be moved).
        format: "huggingface" or "google".
        vocab_path: optional vocabulary to ship with the weights; it must
            hold exactly the model's `vocab_size` tokens.
        lowercase: optional bool, the tokenizer's casing, recorded as
            `do_lower_case` in `tokenizer_config.json`. When None it is read
            from a `tokenizer_config.json` beside `vocab_path`, else inferred
            from the vocabulary (`tokenizer_files.read_do_lower_case`), so a
            cased vocabulary stays cased.

    Returns:
        str, the folder or prefix written.

    Raises:
        ValueError: unknown format, or a vocabulary of another size.
        TypeError: `model` is not a `BertEncoder` or `BertPretrainer`.
        FileNotFoundError: `vocab_path` does not exist.
        FileExistsError: a file to be written exists already.
        (All before anything is written.)
    """
    from kbert.staging import check_free, staged_folder

    if format not in ("huggingface", "google"):
        raise ValueError(f"Unknown format {format!r}; save writes 'huggingface' or 'google'.")
    if not isinstance(model, (BertEncoder, BertPretrainer)):
        raise TypeError(
            f"save takes a kbert BertEncoder or BertPretrainer; received {type(model).__name__} "
            "(for a task model, pass its .encoder)."
        )
    path = os.fspath(path)
    if format == "google" and (path.endswith(("/", os.sep)) or os.path.isdir(path)):
        path = os.path.join(path, "bert_model.ckpt")  # a folder: Google's usual prefix in it
    encoder = model.encoder if isinstance(model, BertPretrainer) else model
    config = encoder.bert_config
    tokenizer_names = []
    if vocab_path is not None:
        vocab_path = os.fspath(vocab_path)
        tokenizer_files.check_vocabulary(vocab_path, config.vocab_size)
        if lowercase is None:
            lowercase, _ = tokenizer_files.read_do_lower_case(vocab_path)
        tokenizer_names = [tokenizer_files.VOCAB_FILE, tokenizer_files.TOKENIZER_CONFIG_FILE]
    weights = canonical.read_model(model)
    if format == "huggingface":
        huggingface.write_folder(weights, config, path, vocab_path, lowercase)
        return path
    folder = os.path.dirname(os.path.abspath(path))
    names = google.checkpoint_file_names(path) + ["bert_config.json"] + tokenizer_names
    check_free(folder, names)
    with staged_folder(folder, names) as stage:
        google.write_saver_checkpoint(weights, os.path.join(stage, os.path.basename(path)))
        config.to_json_file(os.path.join(stage, "bert_config.json"))
        if vocab_path is not None:
            tokenizer_files.write_tokenizer_files(stage, vocab_path, lowercase)
    return path


def to_keras_hub(model):
    """Converts a kbert model to keras-hub: `(BertBackbone, MaskedLMHead or None)`.

    The head is returned for a `BertPretrainer` (keras-hub has no NSP head, so
    `cls/seq_relationship` is not carried over). keras-hub computes tanh GELU
    whatever the kbert config says.
    """
    from kbert.checkpoints import keras_hub_bert

    encoder = model.encoder if isinstance(model, BertPretrainer) else model
    return keras_hub_bert.from_canonical(canonical.read_model(model), encoder.bert_config)


def load_tokenizer(path, lowercase=None):
    """Builds a `kbert.text.BertTokenizer` for a checkpoint from the vocabulary beside it.

    The vocabulary: `path` itself when it is a `.txt` file, else the
    `vocab.txt` (or single `*vocab*.txt`) in the folder of `path`
    (`tokenizer_files.find_vocabulary`). Casing: `lowercase` when given;
    else `do_lower_case` from a `tokenizer_config.json` beside the
    vocabulary (HuggingFace, and every folder kbert writes); else inferred
    from the vocabulary itself (a cased BERT vocabulary holds upper-case word
    pieces, an uncased one none), since Google's releases record casing only
    in their folder names (`tokenizer_files.read_do_lower_case`).

    Args:
        path: a folder, a checkpoint prefix/file inside one, or a vocabulary file.
        lowercase: optional bool overriding the above.

    Returns:
        `kbert.text.BertTokenizer`.

    Raises:
        FileNotFoundError: `path` or its vocabulary does not exist (named).
        ValueError: several candidate vocabularies, or an unreadable
            `tokenizer_config.json`.
    """
    from kbert.text import BertTokenizer

    vocab = tokenizer_files.find_vocabulary(path)
    if lowercase is None:
        lowercase, _ = tokenizer_files.read_do_lower_case(vocab)
    return BertTokenizer(vocab, lowercase=lowercase)
