"""Slow (about 17 minutes on 2 cores): pretraining learns real language.

Run with `python -m pytest -m slow`. bert_tiny pretrained on WikiText-2 valid with
MirroredStrategy over 2 logical CPUs must reach, on held-out WikiText-2 test, a masked-LM
accuracy at least twice that of always predicting the most frequent masked token.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bert_tiny_beats_majority_baseline_twice(tmp_path, wikitext_valid, wikitext_test):
    model_dir = tmp_path / "wiki"
    subprocess.run(
        [sys.executable, "-m", "trainers.pretrain", f"--model_dir={model_dir}",
         "--strategy=mirrored", "--num_cpu_devices=2", f"--corpus={wikitext_valid}",
         f"--eval_corpus={wikitext_test}", "--train_steps=4000", "--checkpoint_every=500",
         "--learning_rate=1e-3", "--eval_batches=100"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), check=True, timeout=1500,
    )
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["num_predictions"] > 10_000
    assert summary["accuracy"] >= 2 * summary["majority_accuracy"], summary
    assert summary["train_seconds"] < 20 * 60, summary
