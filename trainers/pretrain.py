r"""Pretrains BERT (masked LM + next sentence) with `model.fit` under a strategy.

Resumable: run it again with the same flags after a kill and it continues
from the newest checkpoint in `--model_dir`, at the same place in the data.

Example (2 logical CPUs, MirroredStrategy, the offline default corpus):
  python -m trainers.pretrain --model_dir=runs/demo --strategy=mirrored \
      --num_cpu_devices=2 --train_steps=300
Outputs in --model_dir: vocab.txt, bert_config.json, ckpt-* checkpoints,
tokenizer_config.json, logs/ (TensorBoard), history.csv, summary.json,
pretrainer.keras and encoder.keras at the end.
"""

import filecmp
import json
import os
import shutil
import sys
import time

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from kbert.models.presets import PRESETS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Output folder (checkpoints, logs, models).")
flags.DEFINE_enum("preset", "bert_tiny", sorted(PRESETS), "Architecture preset.")
flags.DEFINE_string("bert_config_file", None, "bert_config.json; overrides --preset.")
flags.DEFINE_string("vocab_file", None, "vocab.txt; default: learn one from the corpus.")
flags.DEFINE_integer("vocab_size", 8000, "Target size when learning a vocabulary.")
flags.DEFINE_bool("lowercase", True, "Uncased tokenization.")
flags.DEFINE_list("corpus", None, "Corpus files/globs; default: CPython's pydoc topics.")
flags.DEFINE_list("eval_corpus", None, "Held-out corpus for the final masked-LM accuracy.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices (0: no split).")
flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.DEFINE_integer("global_batch_size", 32, "Examples per step, over all replicas.", lower_bound=1)
flags.DEFINE_integer("sequence_length", 128, "Tokens per example.", lower_bound=8)
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked positions per example.", lower_bound=1)
flags.DEFINE_integer("dupe_factor", 5, "Passes over the corpus with different NSP pairings.", lower_bound=1)
flags.DEFINE_integer("train_steps", 300, "Total optimizer steps.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints (and at the last step).", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_integer("warmup_steps", None, "Warmup steps (default 10% of train_steps).")
flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay.")
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_integer("eval_batches", 50, "Batches of --eval_corpus to evaluate.")
flags.DEFINE_integer("seed", 12345, "Seed for data and initialisation.")
flags.mark_flag_as_required("model_dir")


def _fail(message):
    """Stops with a one-line error (no usage dump) and exit code 1."""
    sys.exit(f"error: {message}")


def _check_same_run(path, wanted, what):
    """A rerun into an existing --model_dir must ask for the same run it resumes."""
    if os.path.exists(path) and wanted is not None:
        with open(path) as f:
            existing = json.load(f)
        if existing != wanted:
            changed = {k: (existing.get(k), wanted.get(k)) for k in set(existing) | set(wanted)
                       if existing.get(k) != wanted.get(k)}
            _fail(
                f"{FLAGS.model_dir} holds a run with another {what} ({path}); changed "
                f"(saved, requested): {changed}. Use a new --model_dir, or the original flags "
                "to resume."
            )


def main(argv):
    del argv
    # Strategies that configure devices must come before any other TF op.
    from kbert.training import distribute, runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    if FLAGS.num_cpu_devices:
        distribute.split_cpu(FLAGS.num_cpu_devices)
    strategy = distribute.create_strategy(FLAGS.strategy, FLAGS.tpu)

    import keras

    from kbert import data, models, text, training

    if FLAGS.global_batch_size % strategy.num_replicas_in_sync:
        _fail(
            f"--global_batch_size={FLAGS.global_batch_size} must be a multiple of the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={FLAGS.strategy}."
        )
    if FLAGS.bert_config_file:
        config = models.BertConfig.from_json_file(FLAGS.bert_config_file)
    else:
        config = models.preset_config(FLAGS.preset)
    if FLAGS.sequence_length > config.max_position_embeddings:
        _fail(
            f"--sequence_length={FLAGS.sequence_length} exceeds the model's "
            f"max_position_embeddings={config.max_position_embeddings}."
        )
    if FLAGS.vocab_file and not os.path.isfile(FLAGS.vocab_file):
        _fail(f"--vocab_file={FLAGS.vocab_file} does not exist.")
    # Corpus problems are reported in one line, before --model_dir is created.
    for name in ("corpus", "eval_corpus"):
        if FLAGS[name].value:
            try:
                data.read_documents(FLAGS[name].value)
            except (FileNotFoundError, IsADirectoryError, ValueError) as e:
                _fail(f"--{name}: {e}")
    _check_same_run(
        os.path.join(FLAGS.model_dir, "tokenizer_config.json"),
        {"do_lower_case": FLAGS.lowercase}, "tokenizer casing",
    )
    os.makedirs(FLAGS.model_dir, exist_ok=True)
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)

    corpus = FLAGS.corpus or [
        data.write_default_corpus(os.path.join(FLAGS.model_dir, "default_corpus.txt"))
    ]
    vocab_path = os.path.join(FLAGS.model_dir, "vocab.txt")
    if FLAGS.vocab_file:
        if not os.path.exists(vocab_path):
            shutil.copyfile(FLAGS.vocab_file, vocab_path)
        elif not filecmp.cmp(FLAGS.vocab_file, vocab_path, shallow=False):
            _fail(
                f"--vocab_file={FLAGS.vocab_file} differs from {vocab_path}, the vocabulary "
                "of the run in --model_dir. Use a new --model_dir."
            )
    elif not os.path.exists(vocab_path):
        lines = [s for doc in data.read_documents(corpus) for s in doc]
        tokens = text.build_vocabulary(lines, FLAGS.vocab_size, lowercase=FLAGS.lowercase)
        text.write_vocabulary(tokens, vocab_path)
        print(f"Learned a {len(tokens)}-token vocabulary (at most --vocab_size="
              f"{FLAGS.vocab_size}) from {corpus}.", flush=True)
    tokenizer = text.BertTokenizer(vocab_path, lowercase=FLAGS.lowercase)
    with open(os.path.join(FLAGS.model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": FLAGS.lowercase}, f)

    config_path = os.path.join(FLAGS.model_dir, "bert_config.json")
    if not FLAGS.bert_config_file:
        config = models.preset_config(FLAGS.preset, vocab_size=tokenizer.vocab_size)
    if config.vocab_size != tokenizer.vocab_size:
        _fail(
            f"The model's vocab_size={config.vocab_size} differs from the "
            f"{tokenizer.vocab_size} tokens of {vocab_path}."
        )
    _check_same_run(config_path, config.to_dict(), "model config")
    config.to_json_file(config_path)

    data_config = data.PretrainingDataConfig(
        sequence_length=FLAGS.sequence_length,
        max_predictions_per_seq=FLAGS.max_predictions_per_seq,
        dupe_factor=FLAGS.dupe_factor,
        seed=FLAGS.seed,
    )
    with strategy.scope():
        encoder = models.BertEncoder.from_bert_config(config)
        model = models.BertPretrainer(encoder)
        optimizer = training.create_adamw(
            FLAGS.learning_rate,
            FLAGS.train_steps,
            warmup_steps=FLAGS.warmup_steps,
            weight_decay=FLAGS.weight_decay,
        )
        training.compile_pretrainer(model, optimizer, jit_compile=FLAGS.jit_compile)
        checkpoint = training.TrainingCheckpoint(model, optimizer, FLAGS.model_dir)
        start_step = checkpoint.restore_or_initialize()
    logging.info(
        "Strategy %s with %d replicas; starting at step %d of %d.",
        type(strategy).__name__, strategy.num_replicas_in_sync, start_step, FLAGS.train_steps,
    )
    print(f"Starting at step {start_step} of {FLAGS.train_steps}.", flush=True)

    every = min(FLAGS.checkpoint_every, FLAGS.train_steps)
    full, rest = divmod(FLAGS.train_steps, every)
    callbacks = [
        training.CheckpointCallback(checkpoint, every),
        keras.callbacks.TensorBoard(os.path.join(FLAGS.model_dir, "logs")),
        keras.callbacks.CSVLogger(os.path.join(FLAGS.model_dir, "history.csv"), append=True),
    ]

    def fit(skip_batches, initial_epoch, epochs, steps_per_epoch):
        # One Keras epoch per checkpoint interval; the stream starts where the run stands.
        dataset = data.build_pretraining_dataset(
            corpus, tokenizer, data_config, FLAGS.global_batch_size, skip_batches=skip_batches
        ).map(data.split_features_for_fit)
        model.fit(
            dataset,
            initial_epoch=initial_epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled (seeded) by kbert.data
            verbose=runs.progress_verbosity(),
        )

    started = time.time()
    if start_step < full * every:
        fit(start_step, start_step // every, full, every)
    if rest and start_step < FLAGS.train_steps:
        # A last, shorter interval when --checkpoint_every does not divide --train_steps.
        fit(max(start_step, full * every), full, full + 1, FLAGS.train_steps - max(start_step, full * every))
    elapsed = time.time() - started
    model.save(os.path.join(FLAGS.model_dir, "pretrainer.keras"))
    encoder.save(os.path.join(FLAGS.model_dir, "encoder.keras"))
    summary = {
        "final_step": int(optimizer.iterations.numpy()),
        "start_step": start_step,
        "train_seconds": round(elapsed, 1),
    }
    if FLAGS.eval_corpus:
        eval_dataset = data.build_pretraining_dataset(
            FLAGS.eval_corpus, tokenizer, data_config, FLAGS.global_batch_size,
            repeat=False, shuffle=False,
        )
        summary.update(
            training.evaluate_masked_lm(model, eval_dataset, max_batches=FLAGS.eval_batches)
        )
    with open(os.path.join(FLAGS.model_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
