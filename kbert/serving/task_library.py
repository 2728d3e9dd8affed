"""A `BertClassifier` as a MediaPipe Tasks / TFLite Task Library text classifier file.

One `.tflite` file that MediaPipe's `TextClassifier` (Android, iOS, Python,
Web) and the TFLite Task Library's `BertNLClassifier` run as they are, with
no tokenizer code in the app: the app passes a string and gets labelled
scores back. The file is the float32 TFLite classifier of
`kbert.serving.classifier_export.export_classifier_tflite` (int32 `ids`,
`mask`, `segment_ids` `(1, sequence_length)` -> float32 `probabilities`
`(1, num_classes)`, TFLite builtin ops only) plus TFLite Model Metadata, the
format MediaPipe Model Maker's BERT text classifier writes:

* the metadata flatbuffer (schema `mediapipe/tasks/metadata/metadata_schema.fbs`,
  identifier "M001") in a model buffer named in the model's `metadata` list as
  "TFLITE_METADATA";
* input tensor metadata named `ids`, `mask`, `segment_ids` (the names
  MediaPipe's `BertPreprocessorCalculator` looks for, listed in the order of
  the subgraph's inputs), with one input process unit
  `BertTokenizerOptions` whose vocabulary is the associated file `vocab.txt`
  (type VOCABULARY);
* output tensor metadata `probability` (values in [0, 1]) with the associated
  file `labels.txt` (type TENSOR_AXIS_LABELS, one label per line, id = line);
* `min_parser_version` "1.1.0": the newest schema members used are input
  process units and `BertTokenizerOptions` (1.1.0; VOCABULARY files are
  1.0.1), as `mediapipe/tasks/cc/metadata/metadata_version.cc` computes it;
* the associated files appended to the flatbuffer as an uncompressed
  (stored) zip archive, as the TFLite Support / MediaPipe metadata populator
  packs them; MediaPipe's `ModelMetadataExtractor` reads them in place and
  refuses compressed entries.

MediaPipe's tokenizer (`BertPreprocessorCalculator` + `BertTokenizer` in
`mediapipe/tasks/cc/text/`) lower-cases ASCII letters only
(`absl::AsciiStrToLower`), then splits on ASCII whitespace, ASCII punctuation,
Unicode punctuation (`\\p{P}`) and CJK ideographs and runs greedy WordPiece
(words over 100 bytes -> `[UNK]`), `[CLS] pieces [SEP]` truncated to the
file's length. It does not strip accents, lower-case non-ASCII letters,
delete control/format characters or split at non-ASCII spaces as BERT's
BasicTokenizer (and `kbert.text.BertTokenizer`) do. Measured in MediaPipe:
ASCII text, CJK, full-width letters, ligatures, curly quotes, dashes, emoji
get kbert's ids; "café", "Ça", "naïveté", "İstanbul", Greek with accents,
U+00A0 / U+3000 / U+2028 spaces, U+0007 and U+200B do not (2 of the 436
shared SST-2 dev sentences, "amélie" and "naiveté", with the same labels).
`normalize_texts` (BERT's normalisation plus Unicode spaces -> " "), done by
the app before `classify`, gives kbert's ids on all of them. A cased model
cannot be served this way (every text is lower-cased) and is refused. The
classifier gets one text (`segment_ids` all 0): a model fine-tuned on text
pairs (`text`, `text_pair`) cannot be served this way either.
"""

import os

import numpy as np

from kbert.serving.archive import atomic_output
from kbert.serving.task_metadata import (  # noqa: F401 (re-exported)
    INPUT_NAMES,
    LABELS_FILE,
    METADATA_IDENTIFIER,
    METADATA_NAME,
    MIN_PARSER_VERSION,
    OUTPUT_NAME,
    TFLITE_IDENTIFIER,
    VOCAB_FILE,
    _metadata_buffer,
    _with_associated_files,
    _with_metadata,
    read_task_metadata,
)
from kbert.serving.tflite import check_tflite_target


def check_task_labels(label_list, num_classes):
    """Validates the label list of a task-library classifier.

    Args:
        label_list: list of class names (id = index); each is written as
            `str(label)`, one per line of `labels.txt`.
        num_classes: int, the model's number of outputs.

    Returns:
        list of str, the labels.

    Raises:
        ValueError: `num_classes` < 2 (a regression score is not a
            probability MediaPipe could rank), a list of another length than
            `num_classes`, an empty label, a label holding a line break (the
            labels file is read line by line), or a repeated label (each
            named).
    """
    if num_classes < 2:
        raise ValueError(
            f"The model has {num_classes} output (regression); MediaPipe's TextClassifier "
            "ranks class probabilities, so only classifiers with >= 2 classes are exported."
        )
    if isinstance(label_list, (str, bytes)) or not hasattr(label_list, "__len__") \
            or len(label_list) != num_classes:
        raise ValueError(
            f"label_list {label_list!r} must name the model's {num_classes} classes, in id order."
        )
    names = [str(x) for x in label_list]
    empty = [i for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise ValueError(f"label_list {label_list} has empty labels at ids {empty}.")
    broken = [name for name in names if "\n" in name or "\r" in name]
    if broken:
        raise ValueError(
            f"label_list has labels with line breaks {broken}; {LABELS_FILE} holds one label a line."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"label_list {label_list} names {repeated} more than once.")
    return names


def _check_export(model, vocab_path, label_list, lowercase):
    """The checks of `export_task_classifier`; returns (labels, vocabulary tokens)."""
    from kbert.models import BertClassifier
    from kbert.text import load_vocabulary

    if not isinstance(model, BertClassifier):
        raise TypeError(
            f"model must be a kbert.models.BertClassifier; received {type(model).__name__}."
        )
    labels = check_task_labels(label_list, model.num_classes)
    if not isinstance(vocab_path, (str, os.PathLike)):
        raise TypeError(f"vocab_path must be the path of a vocab.txt; received {vocab_path!r}.")
    tokens = load_vocabulary(vocab_path)
    vocab_size = model.encoder.bert_config.vocab_size
    if len(tokens) != vocab_size:
        raise ValueError(
            f"{vocab_path} holds {len(tokens)} tokens but the model's vocab_size is "
            f"{vocab_size}; export with the vocabulary the model was trained with."
        )
    if lowercase is None:
        from kbert.checkpoints import tokenizer_files

        lowercase, _ = tokenizer_files.read_do_lower_case(os.fspath(vocab_path))
    if not lowercase:
        raise ValueError(
            f"{vocab_path} is a cased vocabulary (lowercase=False), but MediaPipe's and the "
            "TFLite Task Library's BERT tokenizer lower-cases every text before WordPiece, "
            "so a cased model would see other ids than it was trained on. Export an uncased "
            "model, or use export_classifier_tflite and tokenize in the app."
        )
    return labels, tokens


def export_task_classifier(model, vocab_path, label_list, path, sequence_length=128,
                           lowercase=None):
    """Writes `model` as a MediaPipe Tasks / TFLite Task Library text classifier file.

    The file holds the float32 TFLite classifier (int32 `ids`, `mask`,
    `segment_ids` `(1, sequence_length)` -> float32 probabilities
    `(1, num_classes)`, from `export_classifier_tflite`), its WordPiece
    vocabulary and label list, and the metadata that tells MediaPipe's
    `TextClassifier` (and the Task Library's `BertNLClassifier`) how to
    tokenize text for it (see the module docstring for the layout and the
    tokenizer's differences from kbert's on non-ASCII text). The file is
    written atomically: a failure leaves nothing at `path`, and an existing
    file is replaced only by a complete one.

    Args:
        model: `kbert.models.BertClassifier` with >= 2 classes, trained on
            single texts (MediaPipe sends no second segment), float32
            weights recommended.
        vocab_path: str, the `vocab.txt` the model was trained with (its
            `tokenizer_config.json`, if beside it, gives the casing).
        label_list: the class names in id order (`str()` of each is written).
        path: str, the `.tflite` file to write.
        sequence_length: int in [3, max_position_embeddings], the fixed input
            length; longer texts are truncated to `sequence_length - 2` pieces.
        lowercase: bool, the model's casing; None reads it as kbert's
            tokenizer does (`tokenizer_config.json` beside the vocabulary,
            else inferred from the tokens). False is refused.

    Returns:
        str, `path`.

    Raises:
        TypeError (before anything is written): a model that is not a
            `BertClassifier`, a `vocab_path` that is not a path.
        ValueError (all before anything is written): a regression model; a
            bad label list (see `check_task_labels`); a vocabulary whose size
            is not the model's `vocab_size` (both named) or that is
            unreadable or lacks BERT's special tokens (see
            `kbert.text.load_vocabulary`); a cased vocabulary; a bad
            `sequence_length`.
        FileNotFoundError, IsADirectoryError: a missing `vocab_path`.

    References: MediaPipe Model Maker's BERT text classifier export and
    `mediapipe/tasks/python/metadata/metadata_writers/text_classifier.py`
    (`create_for_bert_model`), whose metadata this reproduces without the
    writer's compiled dependencies.
    """
    from kbert.serving.classifier_export import export_classifier_tflite

    labels, tokens = _check_export(model, vocab_path, label_list, lowercase)
    check_tflite_target(model, sequence_length)
    with atomic_output(path) as target:
        flatbuffer = export_classifier_tflite(model, target, sequence_length)
        files = {
            VOCAB_FILE: ("\n".join(tokens) + "\n").encode("utf-8"),
            LABELS_FILE: "\n".join(labels).encode("utf-8"),
        }
        metadata = _metadata_buffer(flatbuffer, len(labels), sequence_length)
        content = _with_associated_files(_with_metadata(flatbuffer, metadata), files)
        with open(target, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        read_task_metadata(target)  # the file MediaPipe will read is complete and consistent
    return path


def normalize_texts(texts):
    """BERT's text normalisation, done before MediaPipe's tokenizer so that it sees kbert's ids.

    MediaPipe's BERT tokenizer lower-cases ASCII only and splits at ASCII
    whitespace only (see the module docstring). Applying, in the app,
    `kbert.text.normalization.normalize_text` (delete NUL, U+FFFD and
    control/format characters; lower-case; NFD; delete combining marks) and
    then mapping Unicode separators (`\\p{Z}`: U+00A0, U+3000, U+2028, ...)
    to a space gives the ids of kbert's uncased `BertTokenizer`. On Android:
    `java.text.Normalizer` (NFD) and a `\\p{Mn}` / `\\p{Z}` regex; in Python:
    this function.

    Args:
        texts: list of str.

    Returns:
        list of str.
    """
    import tensorflow as tf

    from kbert.text.normalization import normalize_text

    texts = list(texts)
    if not texts:
        return []
    normalized = tf.strings.regex_replace(normalize_text(tf.constant(texts), True), r"\p{Z}", " ")
    return [t.decode("utf-8") for t in normalized.numpy()]


def run_task_classifier(path, texts):
    """Classifies `texts` with MediaPipe Tasks' `TextClassifier`, as an app would.

    The file's own metadata does the tokenizing (see the module docstring);
    every category is returned.

    Args:
        path: str, a file from `export_task_classifier`.
        texts: list of str (or one str).

    Returns:
        list (one per text) of dict label -> float score, in label-id order.

    Raises:
        TypeError: a text that is not a str.
        ImportError: MediaPipe is not installed (`pip install mediapipe`).
        RuntimeError / ValueError: MediaPipe refuses the file (its message).
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be str; received {bad[:5]}.")
    try:
        from mediapipe.tasks.python.core import base_options
        from mediapipe.tasks.python.text import text_classifier
    except ImportError as e:
        raise ImportError(f"run_task_classifier needs MediaPipe (pip install mediapipe): {e}") from e
    options = text_classifier.TextClassifierOptions(
        base_options=base_options.BaseOptions(model_asset_path=os.fspath(path)))
    results = []
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        for text in texts:
            categories = classifier.classify(text).classifications[0].categories
            ordered = sorted(categories, key=lambda c: c.index)
            results.append({c.category_name: float(c.score) for c in ordered})
    return results


def verify_task_classifier(path, model, tokenizer, texts, atol=1e-4, normalize=False,
                           batch_size=64):
    """Compares MediaPipe's `TextClassifier` on raw text with `model` on kbert's ids.

    MediaPipe tokenizes `texts` itself from the file's metadata
    (`run_task_classifier`); the reference is the Keras model on the ids of
    kbert's `BertTokenizer` + `BertPacker` at the file's length. On ASCII
    text the two tokenizers agree; on accented or other non-ASCII text
    MediaPipe's does not normalise (see the module docstring), and
    `normalize=True` applies `normalize_texts` to the texts first, as an app
    should before classifying.

    Args:
        path: str, a file from `export_task_classifier`.
        model: the `BertClassifier` it was exported from.
        tokenizer: the model's `kbert.text.BertTokenizer`.
        texts: list of str.
        atol: float, the largest allowed absolute probability difference.
        normalize: bool, `normalize_texts` before both runs.
        batch_size: int, Keras batch size.

    Returns:
        dict: `texts` (count), `max_abs_diff`, `label_agreement` (fraction),
        `differing`: list of (index, max abs difference) of the texts above
        `atol`, largest first, `abs_diffs` (float array, the largest
        difference of each text), `labels` (the file's).

    Raises:
        kbert.serving.ExportVerificationError: a predicted label that differs
            or a difference above `atol` (the report in the message).
    """
    import tensorflow as tf

    from kbert.serving.fresh_process import ExportVerificationError
    from kbert.text import BertTextPreprocessor

    info = read_task_metadata(path)
    texts = normalize_texts(texts) if normalize else list(texts)
    results = run_task_classifier(path, texts)
    actual = np.array([[r[label] for label in info["labels"]] for r in results], np.float64)
    preprocessor = BertTextPreprocessor(tokenizer, info["sequence_length"])
    expected = []
    for start in range(0, len(texts), batch_size):
        features = preprocessor(texts[start:start + batch_size])
        logits = tf.cast(model(features, training=False), tf.float32)
        expected.append(tf.nn.softmax(logits, axis=-1).numpy())
    expected = np.concatenate(expected) if expected else np.zeros_like(actual)
    diffs = np.abs(actual - expected).max(-1) if len(texts) else np.zeros(0)
    agreement = float(np.mean(actual.argmax(-1) == expected.argmax(-1))) if len(texts) else 1.0
    differing = sorted(((int(i), float(diffs[i])) for i in np.flatnonzero(diffs > atol)),
                       key=lambda item: -item[1])
    report = {"texts": len(texts), "max_abs_diff": float(diffs.max(initial=0.0)),
              "label_agreement": agreement, "differing": differing, "abs_diffs": diffs,
              "labels": info["labels"]}
    if agreement < 1.0 or differing:
        shown = [(i, round(d, 6), texts[i][:80]) for i, d in differing[:5]]
        raise ExportVerificationError(
            f"MediaPipe TextClassifier on {path} differs from the Keras model: label agreement "
            f"{agreement:.4f}, max abs difference {report['max_abs_diff']:.3g} (atol {atol}); "
            f"{len(differing)} texts above atol, largest: {shown}."
        )
    return report
