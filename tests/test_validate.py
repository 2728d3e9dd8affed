"""export.validate: every artifact run in its consumer's runtime and judged against Keras."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from kbert.models import BertEncoder
from kbert.serving import (
    export_classifier_tflite,
    export_saved_model,
    export_tflite,
    validate,
)
from kbert.serving.tflite import convert_to_tflite
from tests.conftest import REPO
from tests.numpy_bert import randomize, tiny_encoder


@pytest.fixture(scope="module")
def encoder(uncased_tokenizer):
    return tiny_encoder(uncased_tokenizer.vocab_size, seed=5)


@pytest.fixture(scope="module")
def export_dir(encoder, uncased_tokenizer, uncased_vocab, tmp_path_factory):
    """A folder laid out as export.export_bert writes it, plus a deliberately swapped file."""
    out = tmp_path_factory.mktemp("export")
    export_saved_model(encoder, uncased_tokenizer, uncased_vocab, str(out / "saved_model" / "bert"),
                       sequence_length=24)
    export_tflite(encoder, str(out / "bert_v1.tflite"), sequence_length=24)
    # A staging folder is not a published artifact.
    os.makedirs(out / ".export-partial-x")
    shutil.copyfile(out / "bert_v1.tflite", out / ".export-partial-x" / "bert_v2.tflite")
    return out


def _swapped_file(encoder, path):
    """A TFLite file whose `token_ids` input feeds the segment embedding and vice versa."""

    def serve(token_ids, segment_ids, padding_mask):
        outputs = encoder({"token_ids": segment_ids, "segment_ids": token_ids % 2,
                           "padding_mask": padding_mask}, training=False)
        return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

    specs = [tf.TensorSpec([1, 24], tf.int32, name=n)
             for n in ("token_ids", "segment_ids", "padding_mask")]
    convert_to_tflite(encoder, serve, specs, "serving_token_ids", path)


def test_every_artifact_passes_with_real_numbers(export_dir, encoder, uncased_tokenizer):
    reports = validate.validate_export(str(export_dir), encoder, uncased_tokenizer)
    assert [(os.path.relpath(r.path, export_dir), r.kind) for r in reports] == [
        ("bert_v1.tflite", "TFLite encoder float32"),
        (os.path.join("saved_model", "bert", "1"), "SavedModel encoder"),
    ]
    for report in reports:
        assert report.passed, report.problems
        assert 0 < report.max_abs_diff <= 1e-5  # float32 reorderings, never exactly 0
        assert report.cosine > 0.99999
        assert report.latency_ms > 0 and report.size_bytes > 1e6
    assert reports[1].notes[0] == "batch-1 latency measured on signature serving_default"
    assert re.fullmatch(r"\d+ warmup requests ran \(serving_default, serving_token_ids, "
                        r"serving_token_ids_int64, serving_wordpieces\)", reports[1].notes[1])
    table = validate.format_report(reports, str(export_dir))
    assert "bert_v1.tflite" in table and "FAIL" not in table


def test_a_different_model_fails_each_artifact(export_dir, encoder, uncased_tokenizer):
    other = BertEncoder.from_config(encoder.get_config())
    randomize(other, seed=6, scale=0.1)
    reports = validate.validate_export(str(export_dir), other, uncased_tokenizer)
    assert [r.passed for r in reports] == [False, False]
    assert all("max abs difference" in r.problems[0] for r in reports)


def test_program_catches_a_swapped_input_binding(export_dir, encoder, uncased_vocab, tmp_path):
    """The CLI finds the run's encoder.keras, passes the right file and fails the swapped one."""
    encoder.save(tmp_path / "encoder.keras")
    shutil.copyfile(uncased_vocab, tmp_path / "vocab.txt")
    exports = tmp_path / "export"
    exports.mkdir()
    shutil.copyfile(export_dir / "bert_v1.tflite", exports / "bert_v1.tflite")
    _swapped_file(encoder, str(exports / "swapped.tflite"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-m", "export.validate", str(exports), "--texts=an apple a day",
         "--texts=keeps the doctor away", "--runs=20"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if ".tflite " in line}
    assert rows["bert_v1.tflite"].endswith(" ok") and rows["swapped.tflite"].endswith("FAIL")
    # Its `segment_ids` input reads the token table: caught before it is even run.
    assert ("FAIL " + str(exports / "swapped.tflite") + ": its `segment_ids` table has 30522 rows; "
            "the Keras model's segment types has 2") in out.stdout
    assert "1 of 2 artifacts passed." in out.stdout


def test_clear_errors(tmp_path, encoder, uncased_tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate.validate_export(str(tmp_path / "missing"), encoder, uncased_tokenizer)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(validate.ValidationError, match="holds no SavedModel folder"):
        validate.validate_export(str(tmp_path), encoder, uncased_tokenizer)
    lone = tmp_path / "lone"
    lone.mkdir()
    _swapped_file(encoder, str(lone / "a.tflite"))
    with pytest.raises(validate.ValidationError, match="no Keras model found beside"):
        validate.validate_export(str(lone))
    with pytest.raises(validate.ValidationError, match="at least one sample"):
        validate.validate_export(str(lone), encoder, uncased_tokenizer, texts=[])


def test_quantized_files_are_held_to_their_recipe(encoder, uncased_tokenizer, tmp_path):
    """A dynamic-range int8 file passes on cosine, where float32's 1e-4 would fail it."""
    path = str(tmp_path / "bert_dynamic_int8.tflite")
    export_tflite(encoder, path, sequence_length=16, recipe="dynamic_int8")
    (report,) = validate.validate_export(path, encoder, uncased_tokenizer)
    assert report.kind == "TFLite encoder dynamic_int8" and report.passed, report.problems
    assert report.max_abs_diff > 1e-4 and report.cosine >= 0.99
    report.cosine = 0.98  # the same numbers under float32's or float16's rules fail
    assert not validate.judge(report, "float32").passed
    assert "cosine 0.98000 < 0.99" in validate.judge(report, "float16").problems[-1]


def test_a_mediapipe_file_runs_in_mediapipe_too(encoder, uncased_tokenizer, uncased_vocab, tmp_path):
    """A Task-format classifier gets two rows: the LiteRT interpreter and MediaPipe's TextClassifier."""
    from kbert.models import BertClassifier
    from kbert.serving import task_library

    model = BertClassifier(BertEncoder.from_config(encoder.get_config()), 3)  # the fixture stays
    randomize(model, seed=7, scale=0.3)
    path = str(tmp_path / "classifier.tflite")
    task_library.export_task_classifier(model, uncased_vocab, ["neg", "neu", "pos"], path, 16)
    reports = validate.validate_export(path, model, uncased_tokenizer)
    assert [r.kind for r in reports] == ["TFLite classifier float32", "MediaPipe TextClassifier"]
    for report in reports:
        assert report.passed, report.problems
        assert report.max_abs_diff <= 1e-5 and report.label_agreement == 1.0
    other = BertClassifier(BertEncoder.from_config(encoder.get_config()), 3)
    randomize(other, seed=8, scale=0.3)
    assert not any(r.passed for r in validate.validate_export(path, other, uncased_tokenizer))


def test_a_string_input_file_runs_with_the_tf_text_kernels(encoder, uncased_tokenizer, tmp_path,
                                                            export_dir):
    from kbert.serving import run_classifier_tflite, run_tflite, tflite_text

    path = str(tmp_path / "text.tflite")
    tflite_text.export_text_tflite(encoder, uncased_tokenizer, path, sequence_length=16)
    (report,) = validate.validate_export(path, encoder, uncased_tokenizer)
    assert report.kind == "TFLite text-in encoder" and report.passed, report.problems
    assert report.max_abs_diff <= 1e-4 and report.cosine > 0.9999
    assert "FastWordpieceTokenizeWithOffsets" in " ".join(report.notes)
    # Each runner, given the other kind of file, says what the file is.
    ids = {k: [[1, 2, 3]] for k in ("token_ids", "segment_ids", "padding_mask")}
    with pytest.raises(ValueError, match=r"is not an id-input encoder file \(signature "
                       r"'serving_token_ids'\); its signatures: serving_default\(text\)"):
        run_tflite(path, ids)
    with pytest.raises(ValueError, match=r"takes inputs \['text'\], not \['ids', 'mask', "):
        run_classifier_tflite(path, ids)
    with pytest.raises(ValueError, match=r"bert_v1.tflite is not a string-input file"):
        tflite_text.run_text_tflite(str(export_dir / "bert_v1.tflite"), ["a"])


def test_foreign_and_damaged_files_fail_on_their_own_row(export_dir, encoder, uncased_tokenizer,
                                                          tmp_path):
    """Another model's file, a classifier checked against an encoder and a truncated file each
    get a FAIL row naming why; the good file beside them still passes."""
    from kbert.models import BertClassifier

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copyfile(export_dir / "bert_v1.tflite", folder / "a_good.tflite")
    data = (export_dir / "bert_v1.tflite").read_bytes()
    (folder / "b_truncated.tflite").write_bytes(data[: len(data) // 3])
    small = BertEncoder(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    export_tflite(small, str(folder / "c_other_vocab.tflite"), sequence_length=8)
    classifier = BertClassifier(encoder, 2)
    export_classifier_tflite(classifier, str(folder / "d_classifier.tflite"), sequence_length=8)
    reports = validate.validate_export(str(folder), encoder, uncased_tokenizer)
    by_name = {os.path.basename(r.path): r for r in reports}
    assert by_name["a_good.tflite"].passed
    assert by_name["b_truncated.tflite"].problems[0].startswith("could not be run: ")
    assert by_name["c_other_vocab.tflite"].problems == [
        ("its `token_ids` table has 100 rows; the Keras model's vocabulary has 30522 (the export "
        "of another model?)")]
    assert by_name["d_classifier.tflite"].problems[0].startswith(
        "no output could be compared with the Keras model")
    assert [r.passed for r in reports] == [True, False, False, False]
