r"""Fine-tuning throughput on SST-2: kbert vs keras-hub, measured in the same run.

One train step = forward + cross-entropy + backward + AdamW update of a BERT
sentence classifier (pooled `[CLS]` -> dropout -> dense), batch 32, through
`model.fit` on a `tf.data` pipeline (no XLA, as the trainer runs by default).
Three configurations, each in its own subprocess (a clean dtype policy, no
cross-talk), all with the same TF thread settings and the same SST-2 rows in
the same order (the rows of the trainer's epoch-0 batch plan):

  (a) kbert as `trainers/finetune.py` runs it: `BertClassifier` on a
      `BertEncoder`, `compile_for_task(..., "classification", create_adamw(...))`,
      `ClassificationTask`'s batches (`read_tsv` -> `encode_texts` with
      `BertTextPreprocessor(padding="longest")` -> `text_dataset`:
      length-bucketed, each batch padded to its longest example);
  (b) the same kbert model on the padded-to-`--sequence_length` batches that
      keras-hub gets;
  (c) keras-hub: `BertTextClassifier` on a `BertBackbone` of the same size,
      inputs from its own `BertTextClassifierPreprocessor`/`BertTokenizer`
      (tokenized once before training, like (a); padded to `--sequence_length`),
      compiled with the same loss, metric and optimizer.

Weights are random (no download); the sizes are all-MiniLM-L6-v2's by
default (vocab 30522, L=6, H=384, A=12, I=1536, 512 positions). Only
steady-state steps are timed: a callback stamps the end of every batch, and
the time from the end of the last warmup step to the end of the last step
(input pipeline included) gives sequences/second.

  python -m benchmarks.finetune_throughput --steps=40 --warmup_steps=5
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED = os.environ.get("KBERT_SHARED_DATA", os.path.join(_REPO, "..", "shared", "data"))
CONFIGS = {
    "a": "kbert, trainer batches (padded to longest)",
    "b": "kbert, keras-hub batches (padded to max)",
    "c": "keras-hub BertTextClassifier",
}
# all-MiniLM-L6-v2's config.json (sentence-transformers), the fine-tuning target.
MINILM = {
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "hidden_act": "gelu", "max_position_embeddings": 512,
}

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 40, "Timed steps per configuration (after --warmup_steps).", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 5, "Untimed first steps (tracing, retracing for new lengths).", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1)
flags.DEFINE_integer("sequence_length", 128, "Longest packed example; keras-hub's padded length.", lower_bound=3)
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_list("configs", list(CONFIGS), "Configurations to time (keras-hub `c` is the reference).")
flags.DEFINE_string("model", "all-MiniLM-L6-v2", "all-MiniLM-L6-v2 or a kbert preset (e.g. bert_small); random weights.")
flags.DEFINE_string("hidden_act", None, "Override the kbert activation (keras-hub always uses tanh GELU).")
flags.DEFINE_string("train_file", os.path.join(_SHARED, "glue", "SST-2", "train.tsv"), "SST-2 train.tsv.")
flags.DEFINE_string("vocab_file", os.path.join(_SHARED, "vocab", "bert-base-uncased", "vocab.txt"), "Uncased BERT vocab.txt.")
flags.DEFINE_float("learning_rate", 5e-5, "AdamW peak learning rate (the trainer's default).")
flags.DEFINE_integer("seed", 12345, "Batch plan and initialisation seed (the trainer's default).")
flags.DEFINE_integer("intra_op_threads", 0, "TF intra-op threads for every configuration (0: TF's default).")
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads for every configuration (0: TF's default).")
flags.DEFINE_string("run_one", None, "Internal: CONFIG,PRECISION,RESULT_JSON; time one configuration here.")


def _bert_config():
    from kbert.models import BertConfig, preset_config

    if FLAGS.model.lower() == "all-minilm-l6-v2":
        config = BertConfig(**MINILM)
    else:
        config = preset_config(FLAGS.model, vocab_size=30522)
    if FLAGS.hidden_act:
        config = BertConfig(**{**config.to_dict(), "hidden_act": FLAGS.hidden_act})
    return config


def _epoch_plan(examples, tokenizer):
    """The trainer's data: unpadded features, its epoch-0 batch plan (first steps) and lengths."""
    from kbert.data import encode_texts, plan_batches
    from kbert.text import BertTextPreprocessor

    preprocessor = BertTextPreprocessor(tokenizer, FLAGS.sequence_length, padding="longest")
    features, _ = encode_texts(examples.texts, preprocessor)
    lengths = features["token_ids"].row_lengths().numpy()
    batches = plan_batches(lengths, FLAGS.batch_size, seed=FLAGS.seed, epoch=0)
    return features, batches, lengths


def _hub_batches(examples, rows, batches):
    """keras-hub's preprocessor on the planned rows, batched as the plan batches them."""
    import keras_hub
    import numpy as np
    import tensorflow as tf

    from kbert.data import padded_batches_dataset

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=FLAGS.vocab_file, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=FLAGS.sequence_length
    )
    texts = [examples.texts[0][i] for i in rows]
    packed = [preprocessor(tf.constant(texts[i:i + 4096])) for i in range(0, len(texts), 4096)]
    features = {
        name: tf.cast(tf.concat([p[name] for p in packed], 0), tf.int32)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    position = np.cumsum([0] + [len(b) for b in batches])
    local = [np.arange(position[i], position[i + 1]) for i in range(len(batches))]
    labels = tf.constant(examples.labels[rows])
    return padded_batches_dataset(features, local, labels=labels)


def _batch_clock():
    """A Keras callback whose `ends` collects the end time (perf_counter) of every train batch."""
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return BatchClock()


def _trainable_parameters(model):
    import numpy as np

    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _run_one(config_name, precision, result_path):
    """Builds, compiles and times one configuration; writes its result as JSON."""
    import tensorflow as tf

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    import keras
    import numpy as np

    from kbert.data import batches_per_epoch, read_tsv, text_dataset
    from kbert.models import BertClassifier, BertEncoder
    from kbert.text import BertTokenizer
    from kbert.training import create_adamw
    from kbert.training.finetuning import compile_for_task

    total = FLAGS.warmup_steps + FLAGS.steps
    examples = read_tsv(FLAGS.train_file, ["sentence"], "label")
    tokenizer = BertTokenizer(FLAGS.vocab_file)
    features, batches, lengths = _epoch_plan(examples, tokenizer)
    if len(batches) < total:
        raise ValueError(f"{FLAGS.train_file} has {len(batches)} batches; need {total}.")
    batches = batches[:total]
    if config_name == "a":
        dataset = text_dataset(
            features, examples.labels, FLAGS.batch_size,
            pad_id=tokenizer.special_token_ids["pad"], seed=FLAGS.seed, epoch=0,
        )
        padded = [int(lengths[b].max()) for b in batches]
    else:
        dataset = _hub_batches(examples, np.concatenate(batches), batches)
        padded = [FLAGS.sequence_length] * total

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(FLAGS.seed)
    bert_config = _bert_config()
    num_classes = len(examples.label_list)
    if config_name == "c":
        import keras_hub

        from kbert.checkpoints.keras_hub_bert import build_backbone

        backbone = build_backbone(bert_config, dtype=precision)
        model = keras_hub.models.BertTextClassifier(
            backbone, num_classes, preprocessor=None, compile=False
        )
        activation = "gelu_approximate (keras-hub's only GELU)"
    else:
        model = BertClassifier(BertEncoder.from_bert_config(bert_config), num_classes)
        activation = bert_config.hidden_act
    # The trainer's optimizer for 3 epochs (its default), 10% warmup.
    total_steps = 3 * batches_per_epoch(len(examples), FLAGS.batch_size)
    optimizer = create_adamw(FLAGS.learning_rate, total_steps, warmup_steps=total_steps // 10)
    compile_for_task(model, "classification", optimizer)
    clock = _batch_clock()
    model.fit(
        dataset.take(total), epochs=1, steps_per_epoch=total, callbacks=[clock],
        verbose=0, shuffle=False,
    )
    if len(clock.ends) != total:
        raise RuntimeError(f"Expected {total} batches, timed {len(clock.ends)}.")
    timed = slice(FLAGS.warmup_steps, total)
    seconds = clock.ends[-1] - clock.ends[FLAGS.warmup_steps - 1]
    steps = np.diff(clock.ends)[FLAGS.warmup_steps - 1:]
    result = {
        "config": config_name,
        "precision": precision,
        "sequences": int(sum(len(b) for b in batches[timed])),
        "seconds": seconds,
        "step_seconds_median": float(np.median(steps)),
        "step_seconds_max": float(np.max(steps)),
        "mean_padded_length": float(np.mean(padded[timed])),
        "trainable_parameters": _trainable_parameters(model),
        "activation": activation,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


def _cpu():
    """(model name, has avx512_bf16) from /proc/cpuinfo."""
    name, flags_ = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown":
                    name = value.strip()
                elif key.strip() == "flags" and not flags_:
                    flags_ = set(value.split())
    except OSError:
        pass
    return name, "avx512_bf16" in flags_


def _forwarded_flags():
    names = ("steps", "warmup_steps", "batch_size", "sequence_length", "model", "hidden_act",
             "train_file", "vocab_file", "learning_rate", "seed", "intra_op_threads",
             "inter_op_threads")
    return [f"--{n}={FLAGS[n].value}" for n in names if FLAGS[n].value is not None]


def _spawn(config_name, precision, folder):
    path = os.path.join(folder, f"{config_name}_{precision}.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "benchmarks.finetune_throughput",
               f"--run_one={config_name},{precision},{path}", *_forwarded_flags()]
    done = subprocess.run(
        command, cwd=_REPO, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"error: ({config_name}) {precision} failed:\n{done.stderr[-4000:]}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv):
    del argv
    if FLAGS.run_one:
        config_name, precision, path = FLAGS.run_one.split(",", 2)
        _run_one(config_name, precision, path)
        return
    unknown = [c for c in FLAGS.configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown --configs {unknown}; use {list(CONFIGS)}.")
    for name in ("train_file", "vocab_file"):
        if not os.path.isfile(FLAGS[name].value):
            sys.exit(f"error: --{name}={FLAGS[name].value} does not exist.")
    import importlib.metadata

    cpu, bf16 = _cpu()
    versions = {p: importlib.metadata.version(p) for p in ("tensorflow", "keras", "keras-hub")}
    threads = f"intra_op={FLAGS.intra_op_threads or 'default'}, inter_op={FLAGS.inter_op_threads or 'default'}"
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores, avx512_bf16: {'yes' if bf16 else 'no'}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; TF threads: {threads}")
    order = [c for c in ("c", "b", "a") if c in FLAGS.configs]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for precision in FLAGS.precisions:
            for config_name in order:
                started = time.time()
                rows.append(_spawn(config_name, precision, folder))
                print(f"  measured ({config_name}) {precision} in {time.time() - started:.0f} s "
                      f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    for row in rows:
        row["seq_per_s"] = row["sequences"] / row["seconds"]
    hub = {r["precision"]: r["seq_per_s"] for r in rows if r["config"] == "c"}

    print(f"\nFine-tuning train step on SST-2, {FLAGS.model} size (random weights), batch "
          f"{FLAGS.batch_size}, sequence_length {FLAGS.sequence_length}, AdamW, model.fit, "
          f"no XLA; {FLAGS.steps} timed steps after {FLAGS.warmup_steps} warmup steps")
    print("| config | precision | seq/s | mean padded length | median s/step | vs keras-hub | trainable params | activation |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seq_per_s'] / hub[r['precision']]:.2f}x" if r["precision"] in hub else "-"
        print(f"| ({r['config']}) {CONFIGS[r['config']]} | {r['precision']} | {r['seq_per_s']:.1f} "
              f"| {r['mean_padded_length']:.1f} | {r['step_seconds_median']:.3f} | {ratio} "
              f"| {r['trainable_parameters']:,} | {r['activation']} |")
    by_key = {(r["config"], r["precision"]): r["seq_per_s"] for r in rows}
    for config_name, target in (("a", 3.0), ("b", 1.1)):
        if (config_name, "float32") in by_key and "float32" in hub:
            ratio = by_key[(config_name, "float32")] / hub["float32"]
            verdict = "met" if ratio >= target else "NOT met"
            print(f"float32 ({config_name}) / (c): {ratio:.2f}x (target >= {target}x: {verdict})")


if __name__ == "__main__":
    app.run(main)
