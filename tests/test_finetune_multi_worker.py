"""trainers/finetune.py --strategy=multi_worker: two worker processes on 127.0.0.1 train like one.

Both workers (TF_CONFIG, MultiWorkerMirroredStrategy) and a single process
run the program on the same flags: a tiny classifier from a checkpoint
written here (dropout 0, so the workers' halves of a batch meet the same
computation as the whole batch; initial weights of standard deviation 1, so
its predictions differ between sentences from the start) on 64 SST-2
sentences, 3 epochs of 4 global batches of 16, evaluated on 40 dev sentences
after each epoch, no export.
The single-process run is the reference: the same files in --model_dir (the
chief's; no worker's temporary folder is left), the same evaluation on both
workers, the same weights and losses.
"""

import csv
import json
import re
import resource
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kbert import checkpoints
from kbert.models import BertEncoder
from tests.conftest import REPO, SHARED_DATA
from tests.test_finetune import _head
from tests.test_multi_worker import _log_tail, _wait, _workers

SECONDS = 300
TINY = {"vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 1.0}


def _files(model_dir):
    """Relative paths under `model_dir`; TensorBoard event files by folder (their names hold the pid)."""
    return sorted(
        str(p.parent.relative_to(model_dir) / "events") if ".tfevents." in p.name
        else str(p.relative_to(model_dir))
        for p in model_dir.rglob("*") if p.is_file()
    )


def _history(model_dir):
    with open(model_dir / "history.csv", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory, uncased_vocab):
    """Runs the two workers and the single process at once; returns folders, logs and seconds."""
    glue = SHARED_DATA / "glue" / "SST-2"
    if not glue.exists():
        pytest.skip(f"shared test data not found: {glue}")
    tmp = tmp_path_factory.mktemp("finetune_multi_worker")
    train = _head(glue / "train.tsv", 65, tmp / "train.tsv")
    dev = _head(glue / "dev.tsv", 41, tmp / "dev.tsv")
    keras.utils.set_random_seed(0)
    encoder = BertEncoder(**TINY)
    checkpoints.save(encoder, str(tmp / "init"), vocab_path=uncased_vocab)
    flags = ["--task=classification", f"--train_file={train}", f"--eval_file={dev}",
             f"--init_checkpoint={tmp / 'init'}", "--num_epochs=3", "--global_batch_size=16",
             "--sequence_length=32", "--learning_rate=1e-2", "--checkpoint_every=5",
             "--export=false",
             # float32 on every CPU: the 1e-4 comparison is about the cross-worker math, and
             # auto picks mixed_bfloat16 where it is native (bfloat16 rounding differs by split).
             "--mixed_precision=none"]
    started, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    single_log = tmp / "single.log"
    with open(single_log, "w") as log:
        single = subprocess.Popen(
            [sys.executable, "-m", "trainers.finetune", *flags, f"--model_dir={tmp / 'single'}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        worker_args = [*flags, f"--model_dir={tmp / 'multi'}", "--strategy=multi_worker"]
        with _workers(tmp, 1, [worker_args, worker_args],
                      command=[sys.executable, "-m", "trainers.finetune"]) as workers:
            deadline = time.time() + SECONDS
            for index, process in enumerate(workers):
                log = tmp / f"session1_worker{index}.log"
                assert _wait(process, deadline, log) == 0, _log_tail(log)
        assert _wait(single, time.time() + SECONDS, single_log) == 0, _log_tail(single_log)
    finally:
        if single.poll() is None:
            single.kill()
        single.wait()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"two workers and one process: {time.monotonic() - started:.1f} s, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s CPU")
    return {"multi": tmp / "multi", "single": tmp / "single", "encoder": encoder,
            "worker1_log": _log_tail(tmp / "session1_worker1.log", 400)}


def test_only_the_chief_writes_the_run_folder(finetune_runs):
    multi, single = _files(finetune_runs["multi"]), _files(finetune_runs["single"])
    assert not [f for f in multi if "workertemp" in f]
    assert multi == single
    for name in ("task_config.json", "vocab.txt", "tokenizer_config.json", "bert_config.json",
                 "eval_history.json", "metrics.json", "best.weights.h5", "model.keras",
                 "history.csv", "checkpoints/ckpt-12.index", "logs/train/events"):
        assert name in multi, name
    assert "export" not in {f.split("/")[0] for f in multi}  # --export=false


def test_two_workers_evaluate_and_train_like_one_process(finetune_runs):
    multi, single = finetune_runs["multi"], finetune_runs["single"]
    records = json.loads((multi / "eval_history.json").read_text())
    expected = json.loads((single / "eval_history.json").read_text())
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 8), (3, 12)]
    # The evaluation is the same numbers, exactly, on the chief, the other worker and one process.
    assert records == expected
    line = re.search(r"worker 1 of 2 workers: 12 steps trained; its evaluation per epoch: (\[.*\])\.",
                     finetune_runs["worker1_log"])
    assert line, finetune_runs["worker1_log"][-3000:]
    assert json.loads(line.group(1)) == expected
    summary = json.loads((multi / "metrics.json").read_text())
    assert summary["best"] == json.loads((single / "metrics.json").read_text())["best"]
    # Each epoch's mean training loss (the global batches'), and the best epoch's weights.
    history, reference = _history(multi), _history(single)
    assert [r["epoch"] for r in history] == [0, 1, 2]
    for row, ref in zip(history, reference):
        assert abs(row["loss"] - ref["loss"]) < 1e-4, (row, ref)
    import kbert  # noqa: F401  (registers the classes)

    weights = keras.saving.load_model(str(multi / "model.keras")).get_weights()
    ref_weights = keras.saving.load_model(str(single / "model.keras")).get_weights()
    diff = max(float(np.abs(a - b).max()) for a, b in zip(weights, ref_weights))
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(weights, finetune_runs["encoder"].get_weights()))
    print(f"max weight diff {diff:.2e} (training moved weights by up to {moved:.2e}); "
          f"losses {[r['loss'] for r in history]} vs {[r['loss'] for r in reference]}; "
          f"accuracy {[r['accuracy'] for r in records]}")
    assert diff < 1e-4
    assert moved > 1e-2
    # The classifier learnt something: not one class for every sentence, and it changed.
    assert len({r["accuracy"] for r in records}) > 1
    assert all(r["matthews_correlation"] != 0 for r in records)
