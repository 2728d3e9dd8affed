"""The tokenizer files that travel with a checkpoint: `vocab.txt` and `tokenizer_config.json`.

One representation for every kbert program and API: HuggingFace's
`tokenizer_config.json` with its key `do_lower_case` (what `transformers`,
keras-hub's HF importer and most BERT tooling read). Every writer in kbert
(`checkpoints.save` in both layouts, `export.convert_checkpoint`,
`trainers.pretrain`, `trainers.finetune`) writes it through
`write_tokenizer_files`, and every reader resolves the casing through
`read_do_lower_case`, in this order:

1. `do_lower_case` in `tokenizer_config.json` beside the vocabulary (kbert
   runs written before this module used the key `lowercase`; it is read too);
2. otherwise inferred from the vocabulary itself: a cased BERT vocabulary holds
   upper-case word pieces ("Paris", "##A"), an uncased one none. Google's
   releases record casing only in their folder names ("cased_L-12_H-768_A-12"),
   so this is what makes their folders load right.

The Python argument is `lowercase` (as in `kbert.text.BertTokenizer` and
keras-hub's `BertTokenizer`); the file key is `do_lower_case`.
"""

import json
import os
import shutil

VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_LEGACY_KEY = "lowercase"  # written by kbert's pretrain before it used HF's key


def vocabulary_is_cased(tokens):
    """True when a BERT vocabulary holds upper-case word pieces (cased models do).

    Args:
        tokens: list of str, the vocabulary in id order.

    Returns:
        bool: more than 1% of the non-special tokens contain an upper-case
        letter. Google's cased English vocabulary: 27%; uncased: 0.
    """
    words = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    return sum(any(c.isupper() for c in t) for t in words) > 0.01 * max(len(words), 1)


def _read_tokens(vocab_path):
    """The vocabulary's lines; ValueError naming the file and line when it is not UTF-8."""
    with open(vocab_path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    tokens = []
    for number, line in enumerate(lines, 1):
        try:
            tokens.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{vocab_path}:{number}: not UTF-8 (byte 0x{line[e.start]:02x} at column "
                f"{e.start + 1}); a BERT vocabulary is UTF-8 text, one token per line."
            ) from None
    return tokens


def find_vocabulary(path):
    """The vocabulary file for a checkpoint path.

    Args:
        path: a vocabulary file itself (any name); a folder holding
            `vocab.txt`, or exactly one `*vocab*.txt` (e.g. HuggingFace's
            `bert-base-cased-vocab.txt`); or a file inside such a folder
            (a checkpoint prefix, `model.safetensors`, an `encoder.keras`).

    Returns:
        str, the vocabulary's path.

    Raises:
        FileNotFoundError: `path` does not exist (its name in the message), or
            no vocabulary is there (the folder and the names looked for).
        ValueError: several `*vocab*.txt` files and no `vocab.txt`.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".txt"):
        return path
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"No such file, folder or checkpoint: {path}.")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    exact = os.path.join(folder, VOCAB_FILE)
    if os.path.isfile(exact):
        return exact
    candidates = sorted(n for n in os.listdir(folder) if "vocab" in n.lower() and n.endswith(".txt"))
    if len(candidates) == 1:
        return os.path.join(folder, candidates[0])
    if candidates:
        raise ValueError(
            f"{folder} holds several vocabularies ({', '.join(candidates)}) and no {VOCAB_FILE}; "
            "pass the one to use."
        )
    raise FileNotFoundError(f"No {VOCAB_FILE} (or *vocab*.txt) in {folder}.")


def read_do_lower_case(vocab_path):
    """The casing of the tokenizer whose vocabulary is `vocab_path`.

    Args:
        vocab_path: str, the vocabulary file; `tokenizer_config.json` is
            looked for in its folder.

    Returns:
        (do_lower_case, source): bool, and str saying where it came from
        (the config file's path, or "inferred from <vocab_path>").

    Raises:
        ValueError: a `tokenizer_config.json` that is not a JSON object, or
            whose `do_lower_case` is not a bool.
    """
    config_path = os.path.join(os.path.dirname(os.path.abspath(vocab_path)), TOKENIZER_CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_path} is not valid JSON: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"{config_path} must hold a JSON object; found {type(values).__name__}.")
        for key in ("do_lower_case", _LEGACY_KEY):
            if key in values:
                if not isinstance(values[key], bool):
                    raise ValueError(f"{config_path}: {key} must be true or false; found {values[key]!r}.")
                return values[key], config_path
    return not vocabulary_is_cased(_read_tokens(vocab_path)), f"inferred from {vocab_path}"


def check_vocabulary(vocab_path, vocab_size):
    """Checks that `vocab_path` exists and holds exactly `vocab_size` tokens.

    Raises:
        FileNotFoundError: no file at `vocab_path`.
        ValueError: a different number of tokens (both numbers in the message).
    """
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"vocab_path={vocab_path} does not exist or is not a file.")
    count = len(_read_tokens(vocab_path))
    if count != vocab_size:
        raise ValueError(
            f"vocab_path={vocab_path} has {count} tokens but the model's vocab_size is {vocab_size}."
        )


def write_tokenizer_files(folder, vocab_path, lowercase):
    """Writes `folder/vocab.txt` (a copy of `vocab_path`) and `folder/tokenizer_config.json`.

    The config is HuggingFace's: `{"do_lower_case": lowercase,
    "tokenizer_class": "BertTokenizer"}`, which `transformers.AutoTokenizer`
    and `read_do_lower_case` read.

    Args:
        folder: str, an existing folder.
        vocab_path: str, the vocabulary to copy (not copied onto itself).
        lowercase: bool, the tokenizer's casing.

    Raises:
        TypeError: `lowercase` not a bool (None must be resolved first, e.g.
            with `read_do_lower_case`).
    """
    if not isinstance(lowercase, bool):
        raise TypeError(f"lowercase must be True or False; received {lowercase!r}.")
    target = os.path.join(folder, VOCAB_FILE)
    if os.path.abspath(vocab_path) != os.path.abspath(target):
        shutil.copyfile(vocab_path, target)
    with open(os.path.join(folder, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"}, f, indent=2)
