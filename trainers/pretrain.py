r"""Pretrains BERT (masked LM + next sentence) with `model.fit` under a strategy.

Resumable: run it again with the same flags after a kill and it continues
from the newest checkpoint in `--model_dir`, at the same place in the data.
The run's settings are saved in MODEL_DIR/pretrain_config.json; a rerun that
changes one of them (model: --preset, --bert_config_file; vocabulary:
--vocab_file, --vocab_size, --lowercase; data: --corpus and its files' bytes,
or --input_files and their names and sizes, --sequence_length, --global_batch_size, --max_predictions_per_seq,
--masked_lm_prob, --dupe_factor, --seed, --gradient_accumulation_steps;
optimizer: --optimizer, --learning_rate, --warmup_steps, --weight_decay,
--global_clipnorm, --mixed_precision; --init_checkpoint) is refused with every
change listed, and nothing in the folder changes. Free to change on resume:
--train_steps (at least the step reached; the learning-rate decay and the
default warmup follow the new total), --checkpoint_every, --strategy,
--num_cpu_devices, --tpu, --jit_compile, --steps_per_execution, --eval_corpus,
--eval_batches, --verbosity.

Example (2 logical CPUs, MirroredStrategy, the offline default corpus):
  python -m trainers.pretrain --model_dir=runs/demo --strategy=mirrored \
      --num_cpu_devices=2 --train_steps=300
Example (pretraining TFRecords, streamed; from trainers/create_pretraining_data.py,
or google-research/bert's and tf-models-official's create_pretraining_data):
  python -m trainers.pretrain --model_dir=runs/wiki --input_files='data/wiki.tfrecord-*' \
      --vocab_file=data/vocab.txt --sequence_length=128 --max_predictions_per_seq=20
The records hold their masks and pairs, so --masked_lm_prob and --dupe_factor
do not apply; their lengths must equal --sequence_length and
--max_predictions_per_seq (checked at start, one error line otherwise).
BERT's two phases: phase 1 at --sequence_length=128, then a new run
  python -m trainers.pretrain --model_dir=runs/phase2 --init_checkpoint=runs/phase1 \
      --sequence_length=512 --max_predictions_per_seq=80 --train_steps=...
starts from phase 1's weights (position embeddings kept) with a new optimizer.
Large batches: --optimizer=lamb and --gradient_accumulation_steps=K (K micro-batches
of --global_batch_size/K per optimizer step; the learning-rate schedule counts
optimizer steps). The summed gradient is clipped once to --global_clipnorm. A NaN
or Inf loss stops the run naming the step, before that step is checkpointed.
Multi-worker (--strategy=multi_worker): TF_CONFIG on every host, a shared
--model_dir; the chief writes the outputs (see README).
Outputs in --model_dir: pretrain_config.json, vocab.txt, bert_config.json,
tokenizer_config.json, ckpt-* checkpoints, logs/ (TensorBoard), history.csv,
summary.json (the whole run: steps, seconds summed over sessions; rewritten at
every checkpoint, `finished` once the models are saved), pretrainer.keras and
encoder.keras at the end. A failed start (bad flag, unreadable corpus, refused
resume) prints one `error:` line, exits with 1 and creates or changes nothing.
"""

import dataclasses
import filecmp
import hashlib
import json
import os
import shutil
import sys
import warnings

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

from kbert.models.presets import PRESETS

RUN_CONFIG = "pretrain_config.json"
_POLICY = {"name": "none"}  # --mixed_precision resolved for this machine (see main)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Output folder (checkpoints, logs, models); a rerun resumes the run in it.")
flags.DEFINE_enum("preset", "bert_tiny", sorted(PRESETS), "Architecture preset.")
flags.DEFINE_string("bert_config_file", None, "bert_config.json; overrides --preset.")
flags.DEFINE_string("vocab_file", None, "vocab.txt; default: learn one from the corpus.")
flags.DEFINE_integer("vocab_size", 8000, "Target size when learning a vocabulary.", lower_bound=6)
flags.DEFINE_bool("lowercase", None, "Uncased tokenization (default: the casing of --vocab_file, from the tokenizer_config.json beside it or inferred from its tokens; True for a learned vocabulary).")
flags.DEFINE_list("corpus", None, "Corpus files/globs; default: CPython's pydoc topics.")
flags.DEFINE_list("input_files", None, "Pretraining TFRecords (files/globs) instead of --corpus; needs --vocab_file.")
flags.DEFINE_list("eval_corpus", None, "Held-out corpus for the final masked-LM accuracy.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy (may change on resume).")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices (0: no split).", lower_bound=0)
flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.DEFINE_integer("global_batch_size", 32, "Examples per step, over all replicas.", lower_bound=1)
flags.DEFINE_integer("sequence_length", 128, "Tokens per example.", lower_bound=8)
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked positions per example.", lower_bound=1)
flags.DEFINE_float("masked_lm_prob", 0.15, "Share of tokens chosen for masking.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("dupe_factor", 5, "Passes over the corpus with different NSP pairings.", lower_bound=1)
flags.DEFINE_integer("train_steps", 300, "Total optimizer steps (may grow on resume).", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints (and at the last step).", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (> 0).")
flags.DEFINE_integer("warmup_steps", None, "Warmup steps, below --train_steps (default 10% of it).", lower_bound=0)
flags.DEFINE_float("weight_decay", 0.01, "Decoupled weight decay (AdamW, LAMB).", lower_bound=0.0)
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "lamb"], "AdamW, or LAMB for large batches (You et al. 2020).")
flags.DEFINE_float("global_clipnorm", 1.0, "Clip the replica-summed gradient to this global norm (BERT: 1.0; 0: off).", lower_bound=0.0)
flags.DEFINE_integer("gradient_accumulation_steps", 1, "Micro-batches per optimizer step; --global_batch_size is per step.", lower_bound=1)
flags.DEFINE_integer("steps_per_execution", 1, "Train steps per tf.function call (TPU: e.g. 100; 1 under --strategy=mirrored).", lower_bound=1)
flags.DEFINE_string("init_checkpoint", None, "Start a new run from these weights (BERT phase 2: a phase-1 run folder or its ckpt-N, with --sequence_length=512; position embeddings kept).")
flags.DEFINE_enum("mixed_precision", "auto", ["auto", "none", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy; auto: mixed_bfloat16 where bfloat16 is native (TPU, GPU >= 8.0, CPU with AVX-512 BF16/AMX), else float32 (none). A run records the resolved policy; resuming it where auto resolves differently is refused: pass the recorded one.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_integer("eval_batches", 50, "Batches of --eval_corpus to evaluate.", lower_bound=1)
flags.DEFINE_integer("seed", 12345, "Seed for data and initialisation.")
flags.mark_flag_as_required("model_dir")


def _fail(message):
    """Stops with a one-line error (no usage dump) and exit code 1."""
    sys.exit(f"error: {message}")


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag reported in one line and exit code 1."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(e)


def _warmup_steps():
    """--warmup_steps, or 10% of --train_steps (at least 1, below --train_steps)."""
    if FLAGS.warmup_steps is not None:
        return FLAGS.warmup_steps
    return min(max(1, FLAGS.train_steps // 10), FLAGS.train_steps - 1)


def _check_flags():
    """Flag combinations absl's per-flag bounds cannot express.

    Raises:
        RunError: the flag, its value and the limit named.
    """
    from kbert.training.runs import RunError

    if FLAGS.learning_rate <= 0:
        raise RunError(f"--learning_rate={FLAGS.learning_rate} must be > 0.")
    if FLAGS.warmup_steps is not None and FLAGS.warmup_steps >= FLAGS.train_steps:
        raise RunError(
            f"--warmup_steps={FLAGS.warmup_steps} must be below --train_steps={FLAGS.train_steps}."
        )
    if os.path.exists(FLAGS.model_dir) and not os.path.isdir(FLAGS.model_dir):
        raise RunError(f"--model_dir={FLAGS.model_dir} is a file, not a folder.")
    if FLAGS.input_files and FLAGS.corpus:
        raise RunError("--input_files and --corpus exclude each other: train from one.")
    if FLAGS.input_files and not FLAGS.vocab_file:
        raise RunError("--input_files needs --vocab_file, the vocabulary the records were "
                       "written with.")


def _read_corpus(name, patterns):
    """Reads a corpus flag's files; returns (files, documents).

    Raises:
        RunError: no match, a folder, bytes that are not UTF-8, no text, or
            fewer than 2 documents for next-sentence pairs (flag and file named).
    """
    from kbert.data import corpus
    from kbert.training.runs import RunError

    try:
        files = corpus.corpus_files(patterns)
        documents = corpus.read_documents(files)
    except (OSError, ValueError) as e:
        raise RunError(f"--{name}: {e}") from e
    # Next-sentence pairs need 2 documents, after one-sentence ones are merged.
    count = len(corpus.merge_short_documents(documents))
    if count < 2:
        raise RunError(
            f"--{name}: {files} hold {count} document(s) of 2+ sentences; next-sentence "
            "pairs need at least 2 (separate documents with blank lines)."
        )
    return files, documents


def _record_files(vocab_size):
    """--input_files, checked against --sequence_length, --max_predictions_per_seq and the vocabulary.

    Returns:
        list of str, the TFRecord files.

    Raises:
        RunError: no match, a folder, a file that is not TFRecord, or a first
            record whose lengths (feature and both lengths named) or ids do not fit.
    """
    from kbert.data import tfrecords
    from kbert.training.runs import RunError

    try:
        files = tfrecords.tfrecord_files(FLAGS.input_files)
        tfrecords.check_pretraining_records(
            files, FLAGS.sequence_length, FLAGS.max_predictions_per_seq, vocab_size)
    except (OSError, ValueError) as e:
        raise RunError(f"--input_files: {e}") from e
    return files


def _lowercase(own_vocab):
    """The run's casing: --lowercase, else that of --vocab_file or the run's own vocabulary
    (`kbert.checkpoints.tokenizer_files.read_do_lower_case`), else True (uncased, learned)."""
    from kbert.checkpoints import tokenizer_files
    from kbert.training import runs

    if FLAGS.lowercase is not None:
        return FLAGS.lowercase
    vocab = FLAGS.vocab_file or (own_vocab if os.path.exists(own_vocab) else None)
    if vocab is None or not os.path.isfile(vocab):
        return True  # a vocabulary learned now (a missing --vocab_file is reported later)
    try:
        return tokenizer_files.read_do_lower_case(vocab)[0]
    except (OSError, ValueError) as e:
        raise runs.RunError(f"--vocab_file={vocab}: {e}") from e


def _vocabulary(own_vocab, documents, lowercase):
    """The run's vocabulary: --vocab_file, the run's vocab.txt, or learned now (not written).

    Returns:
        (tokens, sha256 of the vocab.txt bytes, learned: bool).

    Raises:
        RunError: a missing or invalid --vocab_file, one that differs from
            the run's vocab.txt, or a --vocab_size the learner refuses.
    """
    from kbert import text
    from kbert.training import runs

    if FLAGS.vocab_file:
        if not os.path.isfile(FLAGS.vocab_file):
            raise runs.RunError(f"--vocab_file={FLAGS.vocab_file} does not exist or is not a file.")
        if os.path.exists(own_vocab) and not filecmp.cmp(FLAGS.vocab_file, own_vocab, shallow=False):
            raise runs.RunError(
                f"--vocab_file={FLAGS.vocab_file} differs from {own_vocab}, the vocabulary "
                "of the run in --model_dir. Use a new --model_dir."
            )
        source = FLAGS.vocab_file
    elif os.path.exists(own_vocab):
        source = own_vocab
    else:
        lines = [s for doc in documents for s in doc]
        try:
            tokens = text.build_vocabulary(lines, FLAGS.vocab_size, lowercase=lowercase)
        except ValueError as e:
            raise runs.RunError(f"--vocab_size={FLAGS.vocab_size}: {e}") from e
        content = ("\n".join(tokens) + "\n").encode("utf-8")
        return tokens, hashlib.sha256(content).hexdigest(), True
    try:
        tokens = text.load_vocabulary(source)
    except (OSError, ValueError) as e:
        raise runs.RunError(f"--vocab_file={source}: {e}") from e
    return tokens, runs.file_digest(source), False


def _plan(model_dir):
    """Checks everything a run needs, reading only; the settings to save or compare.

    Returns:
        dict: `config` (BertConfig), `data_config`, `corpus_files` (None:
        the default corpus or records), `record_files` (--input_files, or
        None), `documents`, `tokens`, `learned_vocab`, `settings` (the run's
        pretrain_config.json), `reached_step`.

    Raises:
        RunError: any problem, in one line naming the flag or file and the
            limit; a resume whose settings differ lists every change.
    """
    from kbert import data, models
    from kbert.data import corpus
    from kbert.training import checkpointing, runs

    try:
        if FLAGS.bert_config_file:
            config = models.BertConfig.from_json_file(FLAGS.bert_config_file)
        else:
            config = models.preset_config(FLAGS.preset)
    except (OSError, ValueError) as e:
        raise runs.RunError(f"--bert_config_file={FLAGS.bert_config_file}: {e}") from e
    if FLAGS.sequence_length > config.max_position_embeddings:
        raise runs.RunError(
            f"--sequence_length={FLAGS.sequence_length} exceeds the model's "
            f"max_position_embeddings={config.max_position_embeddings}."
        )
    try:
        data_config = data.PretrainingDataConfig(
            sequence_length=FLAGS.sequence_length,
            max_predictions_per_seq=FLAGS.max_predictions_per_seq,
            masked_lm_prob=FLAGS.masked_lm_prob,
            dupe_factor=FLAGS.dupe_factor,
            seed=FLAGS.seed,
        )
    except ValueError as e:
        raise runs.RunError(f"--{e}") from e  # names the flag, its value and the limit

    if FLAGS.input_files:  # the records are checked once the vocabulary is known
        files, documents, corpus_record, corpus_digest = None, None, None, None
    elif FLAGS.corpus:
        files, documents = _read_corpus("corpus", FLAGS.corpus)
        corpus_record = [os.path.abspath(f) for f in files]
        corpus_digest = runs.files_digest(files)
    else:
        files = None
        default_text = corpus.default_corpus_text()
        documents = corpus.parse_documents(default_text)
        corpus_record = "default: pydoc_data.topics"
        corpus_digest = hashlib.sha256(default_text.encode("utf-8")).hexdigest()
    if FLAGS.eval_corpus:
        _read_corpus("eval_corpus", FLAGS.eval_corpus)
    if FLAGS.init_checkpoint and not any(
        os.path.exists(FLAGS.init_checkpoint + suffix) for suffix in ("", ".index")
    ):
        raise runs.RunError(
            f"--init_checkpoint={FLAGS.init_checkpoint}: no run folder, .keras file or "
            "checkpoint (prefix.index) there."
        )

    reached = checkpointing.latest_checkpoint(model_dir)
    reached_step = int(reached.rsplit("-", 1)[1]) if reached else 0
    if reached_step > FLAGS.train_steps:
        raise runs.RunError(
            f"--train_steps={FLAGS.train_steps} is below step {reached_step}, which the run in "
            f"{model_dir} has reached; give --train_steps >= {reached_step} or a new --model_dir."
        )

    lowercase = _lowercase(os.path.join(model_dir, "vocab.txt"))
    tokens, vocab_digest, learned = _vocabulary(os.path.join(model_dir, "vocab.txt"), documents,
                                                lowercase)
    if not FLAGS.bert_config_file:
        config = models.preset_config(FLAGS.preset, vocab_size=len(tokens))
    if config.vocab_size != len(tokens):
        raise runs.RunError(
            f"--bert_config_file={FLAGS.bert_config_file} has vocab_size={config.vocab_size} "
            f"but the vocabulary has {len(tokens)} tokens."
        )
    record_files = _record_files(len(tokens)) if FLAGS.input_files else None
    settings = {
        "preset": None if FLAGS.bert_config_file else FLAGS.preset,
        **{f"bert_config.{k}": v for k, v in config.to_dict().items()},
        "do_lower_case": lowercase,
        "vocab_size": None if FLAGS.vocab_file else FLAGS.vocab_size,
        "vocab_sha256": vocab_digest,
        "corpus": corpus_record,
        "corpus_sha256": corpus_digest,
        **dataclasses.asdict(data_config),
        **(_record_settings(record_files) if record_files else {}),
        "global_batch_size": FLAGS.global_batch_size,
        "learning_rate": FLAGS.learning_rate,
        "warmup_steps": FLAGS.warmup_steps,
        "weight_decay": FLAGS.weight_decay,
        "mixed_precision": _POLICY["name"],
        "optimizer": FLAGS.optimizer,
        "global_clipnorm": FLAGS.global_clipnorm,
        "gradient_accumulation_steps": FLAGS.gradient_accumulation_steps,
        "init_checkpoint": FLAGS.init_checkpoint and os.path.abspath(FLAGS.init_checkpoint),
    }
    if not runs.compare_run_config(os.path.join(model_dir, RUN_CONFIG), settings, "settings"):
        # A folder of a run from before pretrain_config.json: its model must still match.
        runs.compare_run_config(
            os.path.join(model_dir, "bert_config.json"), config.to_dict(), "model config"
        )
    return {
        "config": config, "data_config": data_config, "corpus_files": files,
        "record_files": record_files, "documents": documents, "tokens": tokens, "learned_vocab": learned,
        "settings": settings, "reached_step": reached_step,
    }


def _record_settings(files):
    """The settings of a run on TFRecords: the files' names and a digest of names and sizes
    (`kbert.data.tfrecords.tfrecord_files_digest`; contents are not hashed, they may be
    terabytes). Masking and pairing settings were fixed when the records were written."""
    from kbert.data import tfrecords

    return {
        "input_files": [f if "://" in f else os.path.abspath(f) for f in files],
        "input_files_digest": tfrecords.tfrecord_files_digest(files),
        **{name: None for name in ("masked_lm_prob", "mask_token_rate", "random_token_rate",
                                   "next_sentence_prob", "short_seq_prob", "dupe_factor")},
    }


def _write_run_files(model_dir, plan):
    """Creates --model_dir and writes what the run reads: settings, vocabulary, config, corpus.

    Returns:
        list of str, the corpus files to train on (None for --input_files).
    """
    from kbert import text
    from kbert.checkpoints import tokenizer_files
    from kbert.data import corpus
    from kbert.training import runs

    os.makedirs(model_dir, exist_ok=True)
    runs.check_run_config(os.path.join(model_dir, RUN_CONFIG), plan["settings"], "settings")
    vocab_path = os.path.join(model_dir, "vocab.txt")
    if not os.path.exists(vocab_path):
        text.write_vocabulary(plan["tokens"], vocab_path)
    if plan["learned_vocab"]:
        print(f"Learned a {len(plan['tokens'])}-token vocabulary (target --vocab_size="
              f"{FLAGS.vocab_size}) from {plan['corpus_files'] or 'the default corpus'}.", flush=True)
    tokenizer_files.write_tokenizer_files(model_dir, vocab_path, plan["settings"]["do_lower_case"])
    plan["config"].to_json_file(os.path.join(model_dir, "bert_config.json"))
    if plan["corpus_files"] or plan["record_files"]:
        return plan["corpus_files"]
    return [corpus.write_default_corpus(os.path.join(model_dir, "default_corpus.txt"))]


def _num_workers(strategy):
    """Workers of a multi-worker strategy (from its cluster resolver's `worker` and `chief`
    tasks), else 1: the reader shards by file only with at least that many files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(spec.get(job, ())) for job in ("chief", "worker")))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    # Strategies that configure devices must come before any other TF op.
    from kbert.training import distribute, multi_worker, runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    try:
        _check_flags()
        if FLAGS.num_cpu_devices:
            distribute.split_cpu(FLAGS.num_cpu_devices)
        strategy = distribute.create_strategy(FLAGS.strategy, FLAGS.tpu)
        task = multi_worker.parse_tf_config() if FLAGS.strategy == "multi_worker" else None
        runs.absorb_xla_notice(FLAGS["verbosity"].present)
    except runs.RunError as e:
        _fail(e)
    except (ValueError, RuntimeError) as e:
        _fail(f"--strategy={FLAGS.strategy}: {e}")

    import keras

    from kbert import checkpoints, data, models, training
    from kbert.training import precision, pretraining

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", precision.EmulatedPrecisionWarning)
        policy = precision.resolve_mixed_precision(FLAGS.mixed_precision, strategy=strategy)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr, flush=True)
    _POLICY["name"] = "none" if policy == "float32" else policy  # as runs recorded it before

    accumulation = FLAGS.gradient_accumulation_steps
    if FLAGS.global_batch_size % (strategy.num_replicas_in_sync * accumulation):
        _fail(
            f"--global_batch_size={FLAGS.global_batch_size} must be a multiple of the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={FLAGS.strategy} times "
            f"--gradient_accumulation_steps={accumulation}."
        )
    micro_batch_size = FLAGS.global_batch_size // accumulation
    # Everything is checked before --model_dir is created or changed.
    try:
        plan = _plan(FLAGS.model_dir)
    except runs.RunError as e:
        _fail(e)
    # Multi-worker: every worker plans before the chief writes the shared --model_dir, and
    # reads it after; the other workers write only into their own temporary folders.
    chief = task is None or task.is_chief
    run_dir = multi_worker.worker_directory(FLAGS.model_dir, task)
    if task:
        multi_worker.barrier(strategy)
    if chief:
        corpus = _write_run_files(FLAGS.model_dir, plan)
    if task:
        multi_worker.barrier(strategy)
        os.makedirs(run_dir, exist_ok=True)
    if not chief:  # what _write_run_files returns on the chief
        corpus = (plan["corpus_files"] if plan["corpus_files"] or plan["record_files"]
                  else [os.path.join(FLAGS.model_dir, "default_corpus.txt")])
    tokenizer = checkpoints.load_tokenizer(FLAGS.model_dir)  # the casing just written
    keras.utils.set_random_seed(FLAGS.seed)
    if _POLICY["name"] != "none":
        keras.mixed_precision.set_global_policy(_POLICY["name"])

    with strategy.scope():
        encoder = models.BertEncoder.from_bert_config(plan["config"])
        model = models.BertPretrainer(encoder)
        # The schedule sees applied updates, not micro-batches (kbert.training.gradients).
        optimizer = training.create_optimizer(
            FLAGS.optimizer,
            FLAGS.learning_rate,
            FLAGS.train_steps,
            warmup_steps=_warmup_steps(),
            weight_decay=FLAGS.weight_decay,
            global_clipnorm=FLAGS.global_clipnorm or None,
            gradient_accumulation_steps=accumulation,
        )
        try:
            training.compile_pretrainer(model, optimizer, jit_compile=FLAGS.jit_compile,
                                        steps_per_execution=FLAGS.steps_per_execution)
        except ValueError as e:
            _fail(f"--steps_per_execution={FLAGS.steps_per_execution}: {e}")
        checkpoint = multi_worker.WorkerCheckpoint(model, optimizer, FLAGS.model_dir, task)
        start_step = checkpoint.restore_or_initialize()
        if start_step == 0 and FLAGS.init_checkpoint:
            try:
                source = training.init_from_checkpoint(model, FLAGS.init_checkpoint)
            except (OSError, ValueError) as e:
                _fail(f"--init_checkpoint={FLAGS.init_checkpoint}: {e}")
            print(f"Initialised from {FLAGS.init_checkpoint} (max_position_embeddings="
                  f"{source.max_position_embeddings}).", flush=True)
    print(
        f"Starting at step {start_step} of {FLAGS.train_steps} "
        f"(--strategy={FLAGS.strategy}, {strategy.num_replicas_in_sync} replica(s), "
        f"--mixed_precision={FLAGS.mixed_precision}: {keras.mixed_precision.global_policy().name}).",
        flush=True,
    )

    try:
        summary = pretraining.RunSummary(
            os.path.join(run_dir, "summary.json"), optimizer, FLAGS.train_steps,
            FLAGS.checkpoint_every, start_step,
        )
    except ValueError as e:
        _fail(e)
    callbacks = [
        # First: a NaN/Inf loss stops the run before CheckpointCallback saves that step.
        training.NonFiniteGuard(check_weights_every=FLAGS.checkpoint_every),
        training.CheckpointCallback(checkpoint, FLAGS.checkpoint_every),
        summary,  # after the checkpoint: the summary never runs ahead of it
    ]
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(os.path.join(FLAGS.model_dir, "logs")),
            keras.callbacks.CSVLogger(os.path.join(FLAGS.model_dir, "history.csv"), append=True),
        ]
    # One Keras epoch per checkpoint interval; each stream starts where the run stands.
    for first_step, initial_epoch, epochs, steps in pretraining.fit_intervals(
        start_step, FLAGS.train_steps, FLAGS.checkpoint_every
    ):
        if plan["record_files"]:
            dataset = data.pretraining_tfrecord_dataset(
                plan["record_files"], micro_batch_size, FLAGS.sequence_length,
                FLAGS.max_predictions_per_seq, seed=FLAGS.seed,
                skip_batches=first_step * accumulation,
                num_workers=_num_workers(strategy),
            )
        else:
            dataset = multi_worker.shard_for_workers(data.build_pretraining_dataset(
                corpus, tokenizer, plan["data_config"], micro_batch_size,
                skip_batches=first_step * accumulation,
            ))
        dataset = dataset.map(data.split_features_for_fit)
        if FLAGS.strategy == "tpu" or FLAGS.jit_compile:
            try:
                training.check_static_shapes(dataset, micro_batch_size)
            except ValueError as e:
                _fail(f"--strategy={FLAGS.strategy}: {e}")
        try:
            model.fit(
                dataset,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps * accumulation,
                callbacks=callbacks,
                shuffle=False,  # the dataset is shuffled (seeded) by kbert.data
                verbose=runs.progress_verbosity(),
            )
        except training.NonFiniteLossError as e:
            _fail(f"{e} Checkpoints up to the last good step are kept; lower --learning_rate "
                  "or check the data, then rerun with a new --model_dir or from that step.")
    trained = summary.step() > start_step
    for name, saved in (("pretrainer.keras", model), ("encoder.keras", encoder)):
        if trained or not os.path.exists(os.path.join(run_dir, name)):
            saved.save(os.path.join(run_dir, name))  # every worker saves; the chief's counts
    if FLAGS.eval_corpus:
        eval_dataset = data.build_pretraining_dataset(
            FLAGS.eval_corpus, tokenizer, plan["data_config"], FLAGS.global_batch_size,
            repeat=False, shuffle=False,
        )
        try:
            metrics = training.evaluate_masked_lm(model, eval_dataset, max_batches=FLAGS.eval_batches)
        except ValueError as e:
            summary.write(finished=True)
            _fail(f"--eval_corpus: {e}")
    elif not trained:  # the same weights: their last evaluation still holds
        metrics = {k: summary.previous[k] for k in pretraining.EVAL_KEYS if k in summary.previous}
    else:
        metrics = {}
    print(json.dumps(summary.write(finished=True, extra=metrics)), flush=True)
    if task:  # no worker leaves while another still works (its runtime would log an abort)
        multi_worker.barrier(strategy)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
