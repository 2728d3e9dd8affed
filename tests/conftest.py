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
