"""Test setup: two logical CPUs (for MirroredStrategy tests) and shared data paths."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("KBERT_SHARED_DATA", REPO.parent / "shared" / "data")
)
UNCASED_VOCAB = SHARED_DATA / "vocab" / "bert-base-uncased" / "vocab.txt"
WIKITEXT = SHARED_DATA / "wikitext-2"


def pytest_report_header(config):
    found = "found" if SHARED_DATA.exists() else "NOT FOUND: tests that need it are skipped"
    return f"kbert shared test data: {SHARED_DATA} ({found}; set KBERT_SHARED_DATA to move it)"


def pytest_terminal_summary(terminalreporter):
    # `pytest -q` (the README's command) hides the header: say it at the end as well.
    if not SHARED_DATA.exists():
        terminalreporter.write_line(
            f"kbert shared test data NOT FOUND at {SHARED_DATA}: the tests that need it were "
            "skipped (set KBERT_SHARED_DATA to point at it).", yellow=True)


def _require(path):
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set KBERT_SHARED_DATA)")
    return str(path)


@pytest.fixture(scope="session")
def uncased_vocab():
    return _require(UNCASED_VOCAB)


@pytest.fixture(scope="session")
def wikitext_valid():
    return _require(WIKITEXT / "wiki.valid.tokens")


@pytest.fixture(scope="session")
def wikitext_test():
    return _require(WIKITEXT / "wiki.test.tokens")


@pytest.fixture(scope="session")
def uncased_tokenizer(uncased_vocab):
    from kbert.text import BertTokenizer

    return BertTokenizer(uncased_vocab)


@pytest.fixture(autouse=True)
def _float32_policy():
    import keras

    yield
    keras.mixed_precision.set_global_policy("float32")


# --- GLUE SST-2 helpers shared by the fine-tuning data tests -----------------------------

SST2 = SHARED_DATA / "glue" / "SST-2"
CLS, SEP, PAD = 101, 102, 0  # Google's uncased vocabulary


def sst2_path(name):
    """Path of a shared SST-2 file; skips the test when the shared data is absent."""
    return _require(SST2 / name)


def plain_rows(path):
    """(sentence, label) pairs of a GLUE TSV file, with str.split only (an independent reader)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].split("\t") == ["sentence", "label"]
    return [tuple(line.split("\t")) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="session")
def hf_tokenizer(uncased_vocab):
    transformers = pytest.importorskip("transformers")
    # transformers 5 takes the vocabulary as `vocab=` (a `vocab_file=` keyword is silently
    # ignored and leaves a 5-token vocabulary), so check that it loaded.
    tokenizer = transformers.BertTokenizerFast(vocab=uncased_vocab, do_lower_case=True)
    assert tokenizer.vocab_size == 30522
    assert tokenizer("hello naïve café", add_special_tokens=False)["input_ids"] == [7592, 15743, 7668]
    return tokenizer


@pytest.fixture(scope="session")
def sst2_dev_rows():
    return plain_rows(sst2_path("dev.tsv"))
