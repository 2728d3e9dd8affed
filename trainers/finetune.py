r"""Fine-tunes a BERT on a task with `model.fit`, keeps the best epoch and exports it.

Tasks: classification and regression (GLUE-style TSV), tagging (CoNLL-U or
CoNLL-2003 columns), squad (SQuAD v1.1/v2.0 JSON). Resumable: run the same
command again after a kill and it continues from the newest checkpoint in
--model_dir, at the same batch.

Example (SST-2 on all-MiniLM-L6-v2):
  python -m trainers.finetune --task=classification \
      --train_file=../shared/data/glue/SST-2/train.tsv \
      --eval_file=../shared/data/glue/SST-2/dev.tsv \
      --text_columns=sentence --label_column=label \
      --init_checkpoint=PATH/TO/HF_FOLDER --model_dir=runs/sst2 --num_epochs=1

Writes to --model_dir: task_config.json, vocab.txt, tokenizer_config.json,
bert_config.json, checkpoints/ (resume), best.weights.h5, eval_history.json,
metrics.json, history.csv, logs/ (TensorBoard), model.keras (the best epoch),
and export/ (SavedModel + TFLite) unless --export=false.

Multi-worker (--strategy=multi_worker, MultiWorkerMirroredStrategy): start the
same command on every host with its TF_CONFIG and one --model_dir that all
hosts share (NFS, GCS). --global_batch_size is the batch of all workers
together; each worker trains on its slice of every batch, so a run trains like
one process on the same flags. Every worker evaluates after each epoch (the
same numbers); only the chief writes --model_dir and exports; the others keep
resume checkpoints in checkpoints/workertemp_<index>, deleted at the end, and
wait for the chief to finish.
"""

import json
import os
import sys
import warnings

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

TASKS = ("classification", "regression", "tagging", "squad")
PRESETS = ("bert_tiny", "bert_mini", "bert_small", "bert_medium", "bert_base", "bert_large")

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", None, TASKS, "What to fine-tune for.")
flags.DEFINE_string("train_file", None, "Training data (TSV, CoNLL-U/CoNLL, SQuAD JSON).")
flags.DEFINE_string("eval_file", None, "Evaluation data, same format; evaluated after every epoch.")
flags.DEFINE_string("model_dir", None, "Run folder (checkpoints, logs, metrics, exports).")
flags.DEFINE_string("init_checkpoint", None, "Pretrained BERT: HF folder, Google/Model Garden checkpoint; its vocab.txt is used.")
flags.DEFINE_string("vocab_file", None, "vocab.txt when starting from scratch (with --preset).")
flags.DEFINE_string("preset", "bert_tiny", "Architecture when starting from scratch.")
flags.DEFINE_bool("lowercase", None, "Override the tokenizer casing found beside the checkpoint.")
flags.DEFINE_list("text_columns", ["sentence"], "TSV: one or two text column names (segment A, B).")
flags.DEFINE_string("label_column", "label", "TSV: the label column name.")
flags.DEFINE_integer("doc_stride", 128, "SQuAD: offset between context window starts, in word pieces.", lower_bound=1)
flags.DEFINE_integer("max_query_length", 64, "SQuAD: question word pieces kept.", lower_bound=1)
flags.DEFINE_bool("version_2_with_negative", False, "SQuAD 2.0: questions may have no answer.")
flags.DEFINE_enum("tag_field", "upos", ["upos", "xpos"], "CoNLL-U: the tag column to learn.")
flags.DEFINE_integer("sequence_length", 128, "Longest packed example; batches are padded to their longest.", lower_bound=3)
flags.DEFINE_integer("global_batch_size", 32, "Examples per step, over all replicas.", lower_bound=1)
flags.DEFINE_integer("num_epochs", None, "Epochs to train (default 3 unless --train_steps).", lower_bound=1)
flags.DEFINE_integer("train_steps", None, "Total steps instead of --num_epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate (AdamW).", lower_bound=0.0)
flags.DEFINE_float("warmup_proportion", 0.1, "Share of steps with linear warmup.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay.", lower_bound=0.0)
flags.DEFINE_float("global_clipnorm", 1.0, "Clip the replica-summed gradient to this global norm (BERT: 1.0; 0: off).", lower_bound=0.0)
flags.DEFINE_integer("checkpoint_every", 500, "Steps between resume checkpoints (and at every epoch end).", lower_bound=1)
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices (0: no split).", lower_bound=0)
flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.DEFINE_enum("mixed_precision", "auto", ["auto", "none", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy; auto: mixed_bfloat16 where bfloat16 is native (TPU, GPU >= 8.0, CPU with AVX-512 BF16/AMX), else float32 (none).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_integer("seed", 12345, "Seed for batches and the head's initialisation.")
flags.DEFINE_bool("export", True, "Export the best model (SavedModel + TFLite) at the end.")
flags.DEFINE_list("tflite_recipes", ["float32"], "Classification: TFLite recipes to write (float32, float16, dynamic_int8, int8_selective; see BUILD.md).")
flags.mark_flags_as_required(["task", "train_file", "eval_file", "model_dir"])


def _fail(message):
    """Stops with one clear line and a non-zero exit code."""
    sys.exit(f"error: {message}")


def _build_task(tokenizer):
    from kbert.training import tasks

    if FLAGS.task in ("classification", "regression"):
        return tasks.ClassificationTask(
            FLAGS.train_file, FLAGS.eval_file, FLAGS.text_columns, FLAGS.label_column,
            tokenizer, sequence_length=FLAGS.sequence_length,
            global_batch_size=FLAGS.global_batch_size,
            regression=FLAGS.task == "regression", seed=FLAGS.seed,
        )
    if FLAGS.task == "tagging":
        return tasks.TaggingTask(
            FLAGS.train_file, FLAGS.eval_file, tokenizer,
            sequence_length=FLAGS.sequence_length, global_batch_size=FLAGS.global_batch_size,
            tag_field=FLAGS.tag_field, seed=FLAGS.seed,
        )
    return tasks.SquadTask(
        FLAGS.train_file, FLAGS.eval_file, tokenizer, sequence_length=FLAGS.sequence_length,
        doc_stride=FLAGS.doc_stride, max_query_length=FLAGS.max_query_length,
        global_batch_size=FLAGS.global_batch_size,
        version_2_with_negative=FLAGS.version_2_with_negative, seed=FLAGS.seed,
    )


def _check_tflite_recipes():
    """Refuses unknown recipes, and recipes other than float32 for tasks without a TFLite file."""
    from kbert.serving.tflite_recipes import TFLITE_RECIPES
    from kbert.training import runs

    unknown = [r for r in FLAGS.tflite_recipes if r not in TFLITE_RECIPES]
    if unknown or not FLAGS.tflite_recipes:
        raise runs.RunError(f"--tflite_recipes={','.join(FLAGS.tflite_recipes)}: choose from "
                            f"{', '.join(TFLITE_RECIPES)}.")
    if FLAGS.task != "classification" and FLAGS.tflite_recipes != ["float32"]:
        raise runs.RunError(f"--tflite_recipes applies to --task=classification only (the "
                            f"{FLAGS.task} export writes a SavedModel).")


def _barrier(strategy, worker, while_doing):
    """`multi_worker.barrier`, failing with one line when a peer stopped `while_doing`."""
    import tensorflow as tf

    from kbert.training import multi_worker

    try:
        multi_worker.barrier(strategy)
    except tf.errors.OpError as e:
        _fail(f"{worker.task_type} {worker.task_index}: another worker stopped {while_doing} "
              f"(see its log): {e.message.splitlines()[0]}")


def main(argv):
    del argv
    from kbert.training import distribute, multi_worker, runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    if FLAGS.num_epochs is not None and FLAGS.train_steps is not None:
        _fail("Give --num_epochs or --train_steps, not both.")
    for name in ("train_file", "eval_file"):
        if not os.path.isfile(FLAGS[name].value):
            _fail(f"--{name}={FLAGS[name].value} does not exist or is not a file.")
    # Strategies that configure devices must come before any other TF op.
    try:
        if FLAGS.num_cpu_devices:
            distribute.split_cpu(FLAGS.num_cpu_devices)
        strategy = distribute.create_strategy(FLAGS.strategy, FLAGS.tpu)
        worker = multi_worker.parse_tf_config() if FLAGS.strategy == "multi_worker" else None
        runs.absorb_xla_notice(FLAGS["verbosity"].present)
    except (ValueError, RuntimeError) as e:
        _fail(f"--strategy={FLAGS.strategy}: {e}")
    chief = worker is None or worker.is_chief

    import keras

    from kbert.training import finetune_run, finetuning, optimization

    if FLAGS.global_batch_size % strategy.num_replicas_in_sync:
        _fail(
            f"--global_batch_size={FLAGS.global_batch_size} must be a multiple of the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={FLAGS.strategy}."
        )
    keras.utils.set_random_seed(FLAGS.seed)
    from kbert.training import precision

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", precision.EmulatedPrecisionWarning)
        policy = precision.resolve_mixed_precision(FLAGS.mixed_precision, strategy=strategy)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr, flush=True)
    if policy != "float32":
        keras.mixed_precision.set_global_policy(policy)
    num_epochs = FLAGS.num_epochs or (None if FLAGS.train_steps else 3)
    # Everything is checked (by every worker) before anything is written to --model_dir.
    config_path = os.path.join(FLAGS.model_dir, "task_config.json")
    try:
        with strategy.scope():
            encoder, tokenizer, vocab_path = runs.load_starting_point(
                FLAGS.init_checkpoint, FLAGS.vocab_file, FLAGS.preset, FLAGS.lowercase
            )
        limit = encoder.bert_config.max_position_embeddings
        if FLAGS.sequence_length > limit:
            raise runs.RunError(
                f"--sequence_length={FLAGS.sequence_length} exceeds the model's "
                f"max_position_embeddings={limit}."
            )
        _check_tflite_recipes()
        task = _build_task(tokenizer)
        settings = {
            "task": FLAGS.task,
            "train_file": os.path.abspath(FLAGS.train_file),
            "train_file_sha256": runs.file_digest(FLAGS.train_file),
            "eval_file": os.path.abspath(FLAGS.eval_file),
            "eval_file_sha256": runs.file_digest(FLAGS.eval_file),
            "init_checkpoint": FLAGS.init_checkpoint and os.path.abspath(FLAGS.init_checkpoint),
            "preset": None if FLAGS.init_checkpoint else FLAGS.preset,
            "vocab_sha256": runs.file_digest(vocab_path),
            "do_lower_case": tokenizer.lowercase,
            "sequence_length": FLAGS.sequence_length,
            "global_batch_size": FLAGS.global_batch_size,
            "num_epochs": num_epochs,
            "train_steps": FLAGS.train_steps,
            "learning_rate": FLAGS.learning_rate,
            "warmup_proportion": FLAGS.warmup_proportion,
            "weight_decay": FLAGS.weight_decay,
            "global_clipnorm": FLAGS.global_clipnorm,
            "seed": FLAGS.seed,
            **task.settings(),
        }
        runs.compare_run_config(config_path, settings, "settings")
        if os.path.exists(FLAGS.model_dir) and not os.path.isdir(FLAGS.model_dir):
            raise runs.RunError(f"--model_dir={FLAGS.model_dir} is a file, not a folder.")
    except (runs.RunError, ValueError, FileNotFoundError, IsADirectoryError) as e:
        _fail(str(e))
    # Multi-worker: the chief writes the shared folder after every worker has checked it.
    if worker:
        _barrier(strategy, worker, "while checking the run's settings")
    if chief:
        os.makedirs(FLAGS.model_dir, exist_ok=True)
        runs.check_run_config(config_path, settings, "settings")  # writes it in a new run
        runs.write_tokenizer_files(FLAGS.model_dir, tokenizer, vocab_path)
        encoder.bert_config.to_json_file(os.path.join(FLAGS.model_dir, "bert_config.json"))
    if worker:
        _barrier(strategy, worker, "while the chief wrote the run's settings")

    schedule = finetuning.epoch_schedule(task.steps_per_epoch, num_epochs, FLAGS.train_steps)
    total_steps = sum(schedule)
    with strategy.scope():
        model = task.build_model(encoder)
        optimizer = optimization.create_adamw(
            FLAGS.learning_rate, total_steps,
            warmup_steps=int(FLAGS.warmup_proportion * total_steps),
            weight_decay=FLAGS.weight_decay,
            global_clipnorm=FLAGS.global_clipnorm or None,
        )
        finetuning.compile_for_task(model, task.task, optimizer, jit_compile=FLAGS.jit_compile)
        # The chief's checkpoints/ (every worker restores from it; non-chiefs save aside).
        checkpoint = multi_worker.WorkerCheckpoint(
            model, optimizer, os.path.join(FLAGS.model_dir, "checkpoints"), worker, max_to_keep=2
        )
        start_step = checkpoint.restore_or_initialize()

    print(
        f"{FLAGS.task}: {task.num_train_examples} training examples ({task.length_note}), "
        f"{task.num_eval_examples} evaluation examples; {total_steps} steps in "
        f"{len(schedule)} epoch(s); starting at step {start_step}.",
        flush=True,
    )
    from kbert.training import NonFiniteLossError

    try:
        final, summary = finetune_run.train_task(
            task, model, checkpoint, FLAGS.model_dir, schedule, start_step,
            FLAGS.global_batch_size, FLAGS.checkpoint_every, runs.progress_verbosity(), worker,
        )
    except NonFiniteLossError as e:
        _fail(f"{e} The last good checkpoint is kept; lower --learning_rate or check the data.")
    if not chief:
        print(f"\n{worker.task_type} {worker.task_index} of {worker.num_workers} workers: "
              f"{summary['steps_this_run']} steps trained; its evaluation per epoch: "
              f"{json.dumps(summary['epochs'])}. The chief writes --model_dir.", flush=True)
        # Until the chief has written everything: a worker that leaves early makes the
        # chief's collective runtime report it as failed.
        _barrier(strategy, worker, "before finishing the run's files")
        return
    metrics_path = os.path.join(FLAGS.model_dir, "metrics.json")
    if FLAGS.export:
        from kbert.serving import ExportVerificationError

        try:
            summary["export"] = finetune_run.export_task(
                task, final, tokenizer, FLAGS.model_dir, FLAGS.sequence_length,
                tflite_recipes=FLAGS.tflite_recipes,
            )
        except ExportVerificationError as e:
            finetuning.write_json(metrics_path, summary)
            _fail(f"export check failed: {e}")
    finetuning.write_json(metrics_path, summary)
    print("\nResult (best epoch, evaluation file):")
    for k, v in (summary["best"] or {}).items():
        print(f"  {k:<24} {v:.4f}")
    print(f"  {'best epoch':<24} {summary['best_epoch']}")
    if "train_sequences_per_second" in summary:
        print(f"  {'train sequences/s':<24} {summary['train_sequences_per_second']}")
    for name, check in (summary.get("export") or {}).get("checked", {}).items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in check.items()))
    print(f"Details: {metrics_path}", flush=True)
    if worker:
        _barrier(strategy, worker, "while the chief wrote the run's files")


if __name__ == "__main__":
    app.run(main)
