"""trainers.pretrain as a user runs it: resume rules, summary over sessions, failed starts.

The program runs are tiny (bert_tiny, a learned 300-token vocabulary, batches of 4
sequences of 32 tokens, 20-odd steps); one finished run is shared by the module.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from kbert.data import corpus
from kbert.training import pretraining, runs
from tests.conftest import REPO

TINY = ["--global_batch_size=4", "--sequence_length=32", "--max_predictions_per_seq=4",
        "--dupe_factor=1", "--vocab_size=300"]


def _pretrain(model_dir, *flags, timeout=600):
    """Runs the program; returns (exit code, stdout + stderr)."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: the program keeps TF quiet
    result = subprocess.run(
        [sys.executable, "-m", "trainers.pretrain", f"--model_dir={model_dir}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, check=False,
    )
    return result.returncode, result.stdout


def _snapshot(folder):
    """Every file under `folder` with its size and modification time."""
    return {
        os.path.relpath(os.path.join(root, name), folder): (
            os.stat(os.path.join(root, name)).st_size,
            os.stat(os.path.join(root, name)).st_mtime_ns,
        )
        for root, _, names in os.walk(folder) for name in names
    }


def _checkpoint_steps(model_dir):
    return sorted(int(p.name.split("-")[1].split(".")[0]) for p in model_dir.glob("ckpt-*.index"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 20-step run with the default --checkpoint_every (100): (model_dir, corpus, output)."""
    folder = tmp_path_factory.mktemp("pretrain")
    corpus_path = folder / "corpus.txt"
    corpus_path.write_text(corpus.default_corpus_text()[:30_000], encoding="utf-8")
    model_dir = folder / "run"
    code, output = _pretrain(model_dir, f"--corpus={corpus_path}", "--train_steps=20", *TINY)
    assert code == 0, output[-3000:]
    return model_dir, corpus_path, output


def _flags(corpus_path, *extra):
    return [f"--corpus={corpus_path}", *TINY, *extra]


def test_fit_intervals_follow_the_checkpoint_grid():
    assert pretraining.fit_intervals(0, 25, 10) == [(0, 0, 2, 10), (20, 2, 3, 5)]
    assert pretraining.fit_intervals(0, 20, 100) == [(0, 0, 1, 20)]
    # Resumed at 20 with more steps and a checkpoint interval that no longer divides 20.
    assert pretraining.fit_intervals(10, 30, 4) == [(10, 2, 3, 2), (12, 3, 7, 4), (28, 7, 8, 2)]
    assert pretraining.fit_intervals(20, 40, 100) == [(20, 0, 1, 20)]
    assert pretraining.fit_intervals(30, 30, 10) == []
    with pytest.raises(ValueError, match="every=0"):
        pretraining.fit_intervals(0, 10, 0)


class _Steps:
    """Stands in for an optimizer: `iterations.numpy()` is the step."""

    def __init__(self, step):
        self.iterations = self
        self.step = step

    def numpy(self):
        return self.step


def test_run_summary_adds_up_sessions(tmp_path):
    path = str(tmp_path / "summary.json")
    optimizer = _Steps(0)
    first = pretraining.RunSummary(path, optimizer, 30, 10, start_step=0)
    first.started -= 5.0
    optimizer.step = 10
    first.on_train_batch_end(0)  # a checkpoint step: written, not finished
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["finished"] is False
    first.started -= 5.0
    optimizer.step = 20
    first.on_train_batch_end(0)  # killed after this checkpoint

    second = pretraining.RunSummary(path, optimizer, 30, 10, start_step=20)
    second.started -= 4.0
    optimizer.step = 30
    done = second.write(finished=True, extra={"accuracy": 0.5})
    assert done["finished"] and done["final_step"] == 30 and done["accuracy"] == 0.5
    assert [(s["start_step"], s["end_step"]) for s in done["sessions"]] == [(0, 20), (20, 30)]
    assert done["train_seconds"] == pytest.approx(14.0, abs=0.2)
    assert (done["start_step"], done["steps_this_session"]) == (20, 10)

    rerun = pretraining.RunSummary(path, optimizer, 30, 10, start_step=30).write(finished=True)
    assert rerun["train_seconds"] == done["train_seconds"]  # not reset to 0
    assert (rerun["steps_this_session"], rerun["train_seconds_this_session"]) == (0, 0.0)
    assert len(rerun["sessions"]) == 2


def test_compare_run_config_lists_every_change_and_writes_nothing(tmp_path):
    path = tmp_path / "config.json"
    assert not runs.compare_run_config(str(path), {"a": 1}, "settings")
    assert not path.exists()
    runs.check_run_config(str(path), {"a": 1, "b": [1, 2], "c": "x"}, "settings")
    assert runs.compare_run_config(str(path), {"a": 1, "b": (1, 2), "c": "x"}, "settings")
    with pytest.raises(runs.RunError) as error:
        runs.compare_run_config(str(path), {"a": 2, "b": [1, 2], "d": 0.5}, "settings")
    assert "(a: 1 -> 2; c: 'x' -> None; d: None -> 0.5)" in str(error.value)
    assert json.loads(path.read_text()) == {"a": 1, "b": [1, 2], "c": "x"}


def test_corpus_files_and_default_corpus_digest(tmp_path):
    (tmp_path / "b.txt").write_text("B.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("A.\n", encoding="utf-8")
    assert corpus.corpus_files([str(tmp_path / "*.txt")]) == [
        str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert corpus.parse_documents("One. Two.\nThree\n\nFour\n") == [["One.", "Two.", "Three"], ["Four"]]
    written = corpus.write_default_corpus(str(tmp_path / "default.txt"))
    assert runs.file_digest(written) == hashlib.sha256(
        corpus.default_corpus_text().encode("utf-8")).hexdigest()
    assert runs.files_digest([written]) != runs.files_digest([written, written])


def test_train_steps_20_with_default_checkpoint_every(finished_run):
    model_dir, _, output = finished_run
    assert output.count("Starting at step 0 of 20") == 1
    # The policy --mixed_precision=auto resolved to on this machine is named.
    import keras

    from kbert.training import precision

    resolved = precision.resolve_mixed_precision("auto")
    expected = keras.mixed_precision.Policy(resolved).name
    assert f"--mixed_precision=auto: {expected})." in output
    # No C++ INFO lines (XLA's first-compile notice included) on the console.
    assert "I0000" not in output and "Compiled cluster" not in output, output[-3000:]
    assert _checkpoint_steps(model_dir) == [20]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["finished"] and summary["final_step"] == 20
    assert summary["train_seconds"] > 0 and len(summary["sessions"]) == 1
    for name in ("pretrainer.keras", "encoder.keras", "pretrain_config.json"):
        assert (model_dir / name).exists()


def test_resume_refuses_changed_data_settings_and_leaves_the_run(finished_run):
    model_dir, corpus_path, _ = finished_run
    before = _snapshot(model_dir)
    original = corpus_path.read_bytes()
    try:
        corpus_path.write_bytes(original + b"\nAn added sentence. And one more.\n")
        code, output = _pretrain(
            model_dir, f"--corpus={corpus_path}", "--train_steps=20", "--global_batch_size=8",
            "--sequence_length=64", "--max_predictions_per_seq=5", "--masked_lm_prob=0.2",
            "--dupe_factor=1", "--vocab_size=300",
        )
    finally:
        corpus_path.write_bytes(original)
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model_dir} holds a run with other"), output
    for change in ("global_batch_size: 4 -> 8", "sequence_length: 32 -> 64",
                   "max_predictions_per_seq: 4 -> 5", "masked_lm_prob: 0.15 -> 0.2",
                   "corpus_sha256: '"):
        assert change in lines[0]
    assert "corpus: " not in lines[0]  # same files, other bytes
    assert "Starting at step" not in output

    code, output = _pretrain(model_dir, *_flags(corpus_path, "--train_steps=10"))
    assert code == 1
    assert output.strip() == (
        f"error: --train_steps=10 is below step 20, which the run in {model_dir} has reached; "
        "give --train_steps >= 20 or a new --model_dir.")
    assert _snapshot(model_dir) == before


def test_resume_with_allowed_changes_keeps_summary_totals(finished_run, tmp_path):
    source, corpus_path, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    first = json.loads((model_dir / "summary.json").read_text())

    # More steps, another checkpoint interval and strategy, logs on: all allowed.
    code, output = _pretrain(model_dir, *_flags(
        corpus_path, "--train_steps=24", "--checkpoint_every=3", "--strategy=mirrored",
        "--num_cpu_devices=2", "--verbosity=0"))
    assert code == 0, output[-3000:]
    assert output.lower().count("starting at step") == 1  # print only, no log line too
    assert "Starting at step 20 of 24 (--strategy=mirrored, 2 replica(s), " in output
    assert _checkpoint_steps(model_dir)[-2:] == [21, 24]
    resumed = json.loads((model_dir / "summary.json").read_text())
    assert resumed["final_step"] == 24 and resumed["finished"]
    assert (resumed["start_step"], resumed["steps_this_session"]) == (20, 4)
    assert resumed["sessions"][0] == first["sessions"][0]
    assert resumed["train_seconds"] == pytest.approx(
        first["train_seconds"] + resumed["train_seconds_this_session"], abs=0.11)

    # A rerun of the finished run trains nothing and keeps the totals.
    code, output = _pretrain(model_dir, *_flags(corpus_path, "--train_steps=24"))
    assert code == 0, output[-3000:]
    assert output.count("Starting at step 24 of 24") == 1
    again = json.loads((model_dir / "summary.json").read_text())
    assert again["train_seconds"] == resumed["train_seconds"] > 0
    assert again["sessions"] == resumed["sessions"] and again["steps_this_session"] == 0


FAILED_STARTS = {  # case: (flags, the error line)
    "absl_bound": (["--sequence_length=4"], "error: flag --sequence_length=4: 4 is not integer >= 8"),
    "predictions_vs_length": (["--sequence_length=32", "--max_predictions_per_seq=40"],
                              "error: --max_predictions_per_seq=40 must be in [1, sequence_length - 3 = 29]."),
    "warmup": (["--train_steps=20", "--warmup_steps=20"],
               "error: --warmup_steps=20 must be below --train_steps=20."),
    "bert_config_file": (["--bert_config_file=missing.json"], "error: --bert_config_file=missing.json: "),
    "one_document": (["--corpus={one_document}"], "error: --corpus: ['{one_document}'] hold 1 document(s)"),
    "latin1": (["--corpus={latin1}"], "error: --corpus: {latin1}:1: not UTF-8"),
    "folder": (["--corpus={folder}"], "error: --corpus: Corpus pattern '{folder}' matches the folder"),
    "missing": (["--corpus={folder}/nope.txt"], "error: --corpus: No corpus file matches"),
    "accumulation": (["--global_batch_size=4", "--gradient_accumulation_steps=3"],
                     ("error: --global_batch_size=4 must be a multiple of the 1 replicas of "
                     "--strategy=default times --gradient_accumulation_steps=3.")),
    "init_checkpoint": (["--init_checkpoint={folder}/nope"], "error: --init_checkpoint={folder}/nope: "),
}


def _failed_start_files(tmp_path):
    paths = {"one_document": tmp_path / "one.txt", "latin1": tmp_path / "latin1.txt",
             "folder": tmp_path / "texts"}
    paths["one_document"].write_text("Only one document. Two sentences.\n", encoding="utf-8")
    paths["latin1"].write_bytes(b"caf\xe9 au lait\n")
    paths["folder"].mkdir()
    return paths


def test_failed_start_prints_one_line_and_creates_no_folder(tmp_path):
    """Each bad command line: one `error:` line, exit 1, no --model_dir. One process runs
    them all (tests/program_failures.py); the last case also runs as a real process."""
    paths = _failed_start_files(tmp_path)
    cases = {name: ([f"--model_dir={tmp_path / name}", *(f.format(**paths) for f in flags)],
                    message.format(**paths)) for name, (flags, message) in FAILED_STARTS.items()}
    result = subprocess.run(
        [sys.executable, "-m", "tests.program_failures", "trainers.pretrain", json.dumps([c[0] for c in cases.values()])],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, (_, message)), (status, printed) in zip(cases.items(), outcomes, strict=True):
        # sys.exit("error: ...") exits with status 1 and prints the message to stderr.
        assert status == message or str(status).startswith(message), (name, status)
        assert "\n" not in str(status) and not printed.strip(), (name, printed[-2000:])
        assert not (tmp_path / name).exists(), name
    # As a user sees it: exactly one line on the console, nothing from TensorFlow.
    code, output = _pretrain(tmp_path / "new", f"--corpus={paths['folder']}/nope.txt")
    assert code == 1
    assert output.strip().startswith("error: --corpus: No corpus file matches"), output[-2000:]
    assert "\n" not in output.strip(), output[-2000:]
    assert not (tmp_path / "new").exists()


def test_failed_start_leaves_an_existing_folder_as_it_was(tmp_path):
    corpus_path = tmp_path / "one.txt"
    corpus_path.write_text("Only one document. Two sentences.\n", encoding="utf-8")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = _snapshot(existing)
    code, output = _pretrain(existing, f"--corpus={corpus_path}")
    assert code == 1 and output.strip().startswith("error: --corpus: "), output[-2000:]
    assert _snapshot(existing) == before


def test_phase_two_starts_from_phase_one_with_lamb_and_accumulation(finished_run, tmp_path):
    """BERT's phase 2: longer sequences from phase 1's weights; LAMB over 2 micro-batches."""
    import keras
    import numpy as np

    import kbert  # noqa: F401  (registers the classes)

    source, corpus_path, _ = finished_run
    model_dir = tmp_path / "phase2"
    code, output = _pretrain(
        model_dir, f"--corpus={corpus_path}", f"--vocab_file={source / 'vocab.txt'}",
        f"--init_checkpoint={source}", "--sequence_length=64", "--max_predictions_per_seq=8",
        "--global_batch_size=4", "--gradient_accumulation_steps=2", "--optimizer=lamb",
        "--learning_rate=1e-3", "--train_steps=2", "--checkpoint_every=1", "--dupe_factor=1")
    assert code == 0, output[-3000:]
    assert f"Initialised from {source}" in output
    # Checkpoints are numbered by optimizer steps: 2 steps of 2 micro-batches each.
    assert _checkpoint_steps(model_dir) == [1, 2]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["final_step"] == 2 and summary["finished"]
    settings = json.loads((model_dir / "pretrain_config.json").read_text())
    assert (settings["optimizer"], settings["gradient_accumulation_steps"]) == ("lamb", 2)

    # Phase 2's weights are phase 1's after 2 small LAMB steps, not a new initialisation;
    # the position rows phase 1 trained (its 32 positions) are kept.
    one = keras.saving.load_model(str(source / "encoder.keras"))
    two = keras.saving.load_model(str(model_dir / "encoder.keras"))
    for name in ("token_embedding", "position_embedding"):
        a = next(w for w in one.weights if name in w.path).numpy()
        b = next(w for w in two.weights if name in w.path).numpy()
        assert a.shape == b.shape
        assert np.corrcoef(a[:32].ravel(), b[:32].ravel())[0, 1] > 0.99, name
        assert np.abs(a - b).max() < 0.05, name
