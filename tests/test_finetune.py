"""Fine-tuning: exact resume, and trainers/finetune.py end to end for every task with its exports."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.data import padded_batches_dataset, plan_batches
from kbert.models import BertClassifier, BertEncoder
from kbert.serving import ExportVerificationError, run_saved_model_in_fresh_process
from kbert.training import create_adamw
from kbert.training.checkpointing import TrainingCheckpoint
from kbert.training.finetuning import compile_for_task, epoch_schedule, fit_epochs
from tests.conftest import REPO, SHARED_DATA

# Dropout stays on: a resumed run must also draw the same dropout masks.
TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32)


def _toy_task(num_examples=40, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 20, num_examples)
    ids = [rng.integers(5, 60, n).astype("int32") for n in lengths]
    features = {
        "token_ids": tf.ragged.constant(ids),
        "segment_ids": tf.ragged.constant([np.zeros(n, "int32") for n in lengths]),
    }
    labels = np.array([int(i.sum() % 2) for i in ids], "int32")
    return features, labels, lengths


def _train(model_dir, schedule, stop_after=None):
    """Trains the toy classifier for `schedule`, restoring from `model_dir`; returns its weights."""
    keras.utils.set_random_seed(1)
    features, labels, lengths = _toy_task()
    model = BertClassifier(BertEncoder(**TINY), num_classes=2)
    optimizer = create_adamw(1e-3, sum(schedule), warmup_steps=2)
    compile_for_task(model, "classification", optimizer)
    checkpoint = TrainingCheckpoint(model, optimizer, str(model_dir))
    start = checkpoint.restore_or_initialize()

    def epoch_dataset(epoch):
        batches = plan_batches(lengths, 8, seed=3, epoch=epoch)
        return padded_batches_dataset(features, batches, labels=tf.constant(labels))

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(optimizer.iterations.numpy())
            if step == stop_after:
                checkpoint.save()
                self.model.stop_training = True

    if stop_after:
        run = [steps for steps in schedule]
        done = 0
        for i, steps in enumerate(run):  # the part of the schedule before the "kill"
            run[i] = min(steps, max(0, stop_after - done))
            done += steps
        fit_epochs(model, epoch_dataset, [s for s in run if s], start, [Stop()], verbose=0)
    else:
        fit_epochs(model, epoch_dataset, schedule, start, verbose=0)
    return start, [w.numpy() for w in model.weights], int(optimizer.iterations.numpy())


def test_fit_epochs_resumes_mid_epoch_exactly(tmp_path):
    schedule = epoch_schedule(5, num_epochs=2)  # 40 examples / batch 8 = 5 steps per epoch
    assert schedule == [5, 5]
    _, uninterrupted, steps = _train(tmp_path / "a", schedule)
    assert steps == 10
    _, _, stopped = _train(tmp_path / "b", schedule, stop_after=7)  # killed in epoch 2
    assert stopped == 7
    start, resumed, steps = _train(tmp_path / "b", schedule)
    assert (start, steps) == (7, 10)
    for a, b in zip(uninterrupted, resumed):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_epoch_schedule_train_steps():
    assert epoch_schedule(5, train_steps=12) == [5, 5, 2]
    assert epoch_schedule(5, train_steps=3) == [3]
    with pytest.raises(ValueError, match="exactly one"):
        epoch_schedule(5, num_epochs=1, train_steps=3)


def _run(args, timeout=600):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "trainers.finetune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _head(path, lines, out):
    with open(path, encoding="utf-8") as f:
        out.write_text("".join(f.readlines()[:lines]), encoding="utf-8")
    return str(out)


@pytest.fixture
def sst2_small(tmp_path):
    glue = SHARED_DATA / "glue" / "SST-2"
    if not glue.exists():
        pytest.skip(f"shared test data not found: {glue}")
    return _head(glue / "train.tsv", 161, tmp_path / "train.tsv"), _head(
        glue / "dev.tsv", 41, tmp_path / "dev.tsv")


def test_finetune_classification_end_to_end(tmp_path, sst2_small, uncased_vocab):
    train, dev = sst2_small
    model_dir = tmp_path / "run"
    args = ["--task=classification", f"--train_file={train}", f"--eval_file={dev}",
            f"--vocab_file={uncased_vocab}", "--preset=bert_tiny", f"--model_dir={model_dir}",
            "--num_epochs=2", "--global_batch_size=16", "--sequence_length=32",
            "--tflite_recipes=float32,dynamic_int8", "--learning_rate=1e-3"]
    result = _run(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Quiet console: no TensorFlow INFO/ERROR chatter, a result table at the end.
    assert "cuInit" not in result.stderr and "I0000" not in result.stderr
    assert "Result (best epoch, evaluation file):" in result.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["train_examples"] == 160 and metrics["eval_examples"] == 40
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    best = max(metrics["epochs"], key=lambda r: r["accuracy"])
    assert metrics["best_epoch"] == best["epoch"]

    # The saved model is the best epoch; its accuracy on dev, computed here independently.
    import kbert  # noqa: F401  (registers the classes)

    model = keras.saving.load_model(str(model_dir / "model.keras"))
    from kbert.text import BertTextPreprocessor, BertTokenizer

    tokenizer = BertTokenizer(str(model_dir / "vocab.txt"))
    rows = [line.rstrip("\n").split("\t") for line in open(dev, encoding="utf-8")][1:]
    texts = [r[0].strip() for r in rows]
    labels = np.array([int(r[1]) for r in rows])
    features = BertTextPreprocessor(tokenizer, 32)(texts)
    probabilities = tf.nn.softmax(model(features)).numpy()
    assert np.mean(probabilities.argmax(-1) == labels) == pytest.approx(best["accuracy"])

    # The exported SavedModel, loaded in a fresh process, answers with label names.
    path = str(model_dir / "export" / "saved_model" / "classifier" / "1")
    out = run_saved_model_in_fresh_process(path, texts)
    assert [str(x) for x in out["label"]] == [str(i) for i in probabilities.argmax(-1)]
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    ids = run_saved_model_in_fresh_process(
        path, {k: v.numpy().tolist() for k, v in features.items()}, signature="serving_token_ids")
    np.testing.assert_allclose(ids["probabilities"], probabilities, atol=1e-5)
    # Malformed requests get an error naming the input, not a crash or a partial answer.
    for bad in ("a film", [["a film", "a second film"]]):
        with pytest.raises(ExportVerificationError,
                           match=r"`text` must be a batch of strings of shape \(batch_size,\)"):
            run_saved_model_in_fresh_process(path, {"text": bad})
    # TFLite: MediaPipe/Task Library input names, float32 probabilities.
    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "export" / "classifier_v1.tflite"))
    runner = interpreter.get_signature_runner("serving_default")
    assert set(runner.get_input_details()) == {"ids", "mask", "segment_ids"}
    row = runner(ids=features["token_ids"].numpy()[:1], mask=features["padding_mask"].numpy()[:1],
                 segment_ids=features["segment_ids"].numpy()[:1])
    np.testing.assert_allclose(row["probabilities"], probabilities[:1], atol=1e-5)
    # The dynamic-range int8 file beside it, validated by its recipe's rules at export.
    quantized = model_dir / "export" / "classifier_v1_dynamic_int8.tflite"
    from kbert.serving import recipe_of

    assert recipe_of(str(quantized)) == "dynamic_int8"
    assert quantized.stat().st_size < 0.5 * (model_dir / "export" / "classifier_v1.tflite").stat().st_size
    check = json.loads((model_dir / "metrics.json").read_text())["export"]["checked"][f"TFLite {quantized}"]
    assert check["label_agreement"] >= 0.97 and check["max_abs_diff"] > 1e-6
    # ... and MediaPipe's metadata, so the same file runs in MediaPipe's TextClassifier.
    from kbert.serving import task_library

    tflite = str(model_dir / "export" / "classifier_v1.tflite")
    assert task_library.read_task_metadata(tflite)["labels"] == ["0", "1"]
    scores = task_library.run_task_classifier(tflite, texts[:3])
    np.testing.assert_allclose([[s["0"], s["1"]] for s in scores], probabilities[:3], atol=1e-5)

    # A rerun resumes the finished run (no training) and exports the next version.
    again = _run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "20 steps in 2 epoch(s); starting at step 20." in again.stdout
    assert (model_dir / "export" / "saved_model" / "classifier" / "2").is_dir()
    # Changed settings are refused, naming the change.
    other = _run([*args[:-1], "--learning_rate=5e-4"])
    assert other.returncode != 0
    assert "learning_rate: 0.001 -> 0.0005" in other.stderr
    assert other.stderr.strip().count("\n") == 0, other.stderr


def test_finetune_bad_input_one_line_errors(tmp_path, sst2_small, uncased_vocab):
    """Bad files and flags: one `error:` line naming the problem. The cases run in one process
    (tests/program_failures.py); the recipe case also as a real process, for the console."""
    train, dev = sst2_small
    common = [f"--vocab_file={uncased_vocab}", f"--model_dir={tmp_path / 'run'}", "--train_steps=1"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood movie\t1\nbad movie\t7\n", encoding="utf-8")
    cases = {
        f"--eval_file={tmp_path / 'nope.tsv'} does not exist": [f"--eval_file={tmp_path / 'nope.tsv'}"],
        f"{bad}:3: label '7' is not one of the training labels ['0', '1']": [f"--eval_file={bad}"],
        "no column ['text'] in the header": [f"--eval_file={dev}", "--text_columns=text"],
    }
    argvs = [["--task=classification", f"--train_file={train}", *extra, *common] for extra in cases.values()]
    result = subprocess.run(
        [sys.executable, "-m", "tests.program_failures", "trainers.finetune", json.dumps(argvs)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for message, (status, _) in zip(cases, outcomes, strict=True):
        assert str(status).startswith("error: ") and message in str(status), (message, status)
        assert "\n" not in str(status), status
    recipe = _run(["--task=classification", f"--train_file={train}", f"--eval_file={dev}",
                   "--tflite_recipes=float32,int4", *common])
    assert recipe.returncode != 0 and recipe.stderr.strip().count("\n") == 0, recipe.stderr
    assert ("--tflite_recipes=float32,int4: choose from float32, float16, dynamic_int8, "
            "int8_selective.") in recipe.stderr


def test_finetune_tagging_end_to_end(tmp_path, uncased_vocab):
    ewt = SHARED_DATA / "ud-english-ewt"
    if not ewt.exists():
        pytest.skip(f"shared test data not found: {ewt}")

    def sentences(path, n, out):
        blocks = path.read_text(encoding="utf-8").split("\n\n")[:n]
        out.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
        return str(out)

    train = sentences(ewt / "en_ewt-ud-dev.conllu", 120, tmp_path / "train.conllu")
    dev = sentences(ewt / "en_ewt-ud-test-a.conllu", 30, tmp_path / "dev.conllu")
    model_dir = tmp_path / "run"
    result = _run(["--task=tagging", f"--train_file={train}", f"--eval_file={dev}",
                   f"--vocab_file={uncased_vocab}", f"--model_dir={model_dir}", "--num_epochs=1",
                   "--global_batch_size=16", "--sequence_length=64", "--learning_rate=1e-3"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert 0.0 < metrics["best"]["accuracy"] <= 1.0
    path = str(model_dir / "export" / "saved_model" / "tagger" / "1")
    out = run_saved_model_in_fresh_process(path, ["The dog barks .", "Go"])
    assert out["num_words"].tolist() == [4, 1] and out["num_tagged_words"].tolist() == [4, 1]
    label_list = json.loads((model_dir / "task_config.json").read_text())["label_list"]
    assert set(out["tags"][0]) <= set(label_list) and out["tags"][1][1] == ""
    # The tags are the Keras model's argmax on each word's first piece.
    import kbert  # noqa: F401
    from kbert.text import BertTokenizer, BertWordPacker

    model = keras.saving.load_model(str(model_dir / "model.keras"))
    packer = BertWordPacker(BertTokenizer(str(model_dir / "vocab.txt")), 64)
    features = packer(tf.ragged.constant([["The", "dog", "barks", "."]]))
    word_ids = features.pop("word_ids").numpy()[0]
    logits = model(features).numpy()[0]
    first = [int(np.flatnonzero(word_ids == w)[0]) for w in range(4)]
    assert list(out["tags"][0]) == [label_list[i] for i in logits[first].argmax(-1)]
    ids = run_saved_model_in_fresh_process(
        path, {k: v.numpy().tolist() for k, v in features.items()}, signature="serving_token_ids")
    np.testing.assert_allclose(ids["logits"][0], logits, atol=1e-5)


def test_finetune_squad_end_to_end(tmp_path, uncased_vocab):
    squad = SHARED_DATA / "squad-v1.1"
    if not squad.exists():
        pytest.skip(f"shared test data not found: {squad}")

    def excerpt(path, paragraphs, out):
        data = json.loads(path.read_text(encoding="utf-8"))
        article = data["data"][0]
        data["data"] = [dict(article, paragraphs=article["paragraphs"][:paragraphs])]
        out.write_text(json.dumps(data), encoding="utf-8")
        return str(out)

    train = excerpt(squad / "train-v1.1-excerpt.json", 3, tmp_path / "train.json")
    dev = excerpt(squad / "dev-v1.1-excerpt.json", 2, tmp_path / "dev.json")
    model_dir = tmp_path / "run"
    result = _run(["--task=squad", f"--train_file={train}", f"--eval_file={dev}",
                   f"--vocab_file={uncased_vocab}", f"--model_dir={model_dir}", "--num_epochs=1",
                   "--global_batch_size=8", "--sequence_length=192", "--doc_stride=64",
                   "--learning_rate=1e-3"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["best"]) == {"exact_match", "f1"}
    path = str(model_dir / "export" / "saved_model" / "question_answering" / "1")
    context = "Super Bowl 50 was played at Levi's Stadium in Santa Clara, California."
    out = run_saved_model_in_fresh_process(
        path, {"question": ["Where was it played?", "Who?"], "context": [context, ""]})
    start, end = int(out["start_char"][0]), int(out["end_char"][0])
    assert 0 <= start < end and context[start:end] == str(out["answer"][0])
    assert out["answer"][1] == "" and out["start_char"][1] == -1
    with pytest.raises(ExportVerificationError, match="`question` and `context` must hold the same"):
        run_saved_model_in_fresh_process(path, {"question": ["a", "b"], "context": [context]})
    with pytest.raises(ExportVerificationError, match="`question` must be a batch of strings"):
        run_saved_model_in_fresh_process(path, {"question": "Where?", "context": context})
    # The span is the best valid (start <= end, within 30 pieces) one of the Keras model's logits.
    import kbert  # noqa: F401
    from kbert.text import BertTokenizer

    model = keras.saving.load_model(str(model_dir / "model.keras"))
    tokenizer = BertTokenizer(str(model_dir / "vocab.txt"))
    special = tokenizer.special_token_ids
    question = tokenizer(["Where was it played?"]).to_list()[0]
    words = context.split()
    pieces = [tokenizer([w]).to_list()[0] for w in words]
    context_ids = [p for word in pieces for p in word]
    ids = [special["cls"], *question, special["sep"], *context_ids, special["sep"]]
    features = {"token_ids": np.array([ids], "int32"),
                "segment_ids": np.array([[0] * (len(question) + 2) + [1] * (len(context_ids) + 1)], "int32"),
                "padding_mask": np.ones((1, len(ids)), "int32")}
    logits = model(features)
    s, e = logits["start_logits"].numpy()[0], logits["end_logits"].numpy()[0]
    offset = len(question) + 2
    best = max(((i, j) for i in range(offset, offset + len(context_ids))
                for j in range(i, min(i + 30, offset + len(context_ids)))),
               key=lambda ij: s[ij[0]] + e[ij[1]])
    assert float(out["score"][0]) == pytest.approx(s[best[0]] + e[best[1]], abs=1e-4)
    owner = [w for w, word in enumerate(pieces) for _ in word]  # word of each context piece
    first_word, last_word = owner[best[0] - offset], owner[best[1] - offset]
    assert words[first_word].startswith(str(out["answer"][0]).split()[0][:1])
    assert str(out["answer"][0]).count(" ") == last_word - first_word
    token_ids = run_saved_model_in_fresh_process(
        path, {k: v.tolist() for k, v in features.items()}, signature="serving_token_ids")
    np.testing.assert_allclose(token_ids["start_logits"][0], s, atol=1e-5)
