r"""Pretraining-step throughput (MLM + NSP): kbert vs keras-hub against the matmul peak, one run.

One train step = forward + masked-LM and next-sentence losses + backward +
AdamW update, batch 32 x sequence 128, 20 masked positions, through
`model.train_on_batch` on one fixed host batch (no XLA, no input pipeline),
for each of `--presets` (default `bert_mini`: L=4, H=256, A=4, I=1024 and
`bert_small`: L=4, H=512, A=8, I=2048; vocabulary 30522) and `--policies`.

  kbert:     `BertPretrainer(BertEncoder)` (exact-erf GELU, BERT's).
  keras-hub: `BertBackbone` + `MaskedLMHead` tied to its token embedding +
             `Dense(2)` NSP head on `pooled_output` (keras-hub's BERT has the
             tanh GELU only).
Both are compiled alike by `kbert.training.compile_pretrainer` (MLM loss +
NSP cross-entropy, their accuracies) with `create_adamw`; dropout 0.1.

Each (preset, policy, model) is timed in its own subprocess (a clean dtype
policy; its peak RSS, `ru_maxrss`, is that model's alone, TensorFlow
included), kbert and keras-hub alternating, `--rounds` times. The step time
of a run is the median of its `--steps` step times; a row reports the median
over rounds. All processes use the same TF threads (`--intra_op_threads`,
default: the cores this process may use; `--inter_op_threads`, default 1).

Matmul peak: in this process, with the same thread settings, `tf.matmul` of
the step's own shapes (T = batch x sequence tokens: T x H x I, T x I x H,
T x H x 3H, and the MLM projection (batch x predictions) x H x vocab) in
float32 and bfloat16, each the best of `--peak_repeats` runs; the peak of a
dtype is the best shape. It is measured before every model subprocess (so
alternating with the steps), and the reported peak is the median of those.

FLOPs of one step (a multiply-add = 2 FLOPs; backward = 2 x forward, so
train = 3 x forward), with B batch, S sequence, P predictions, T = B*S,
L layers, H hidden, I intermediate, V vocabulary:

  F = 6*T*L*(4*H^2 + 2*H*I)    Q, K, V, output and the two FFN kernels, every token
    + 12*L*T*S*H               attention scores Q.K^T and probabilities x V
    + 6*B*P*(H^2 + H*V)        MLM transform and the tied vocabulary projection,
                               at the P predicted positions only
    + 6*B*(H^2 + 2*H)          pooler and NSP head, on [CLS] only

(bert_small: 383.2 GFLOP per step; bert_mini: 114.0). Biases, LayerNorm, GELU, softmax,
dropout, embedding lookups and the optimizer are not counted. Achieved
GFLOP/s = F / step time; "of peak" divides by the matmul peak of the
policy's compute dtype (float32 for float32, bfloat16 for mixed_bfloat16).

  python -m benchmarks.train_throughput --presets=bert_small --rounds=3
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 30522
MODELS = ("kbert", "keras-hub")

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["bert_mini", "bert_small"], "kbert presets; keras-hub gets the same sizes.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_integer("steps", 8, "Timed steps per model run (after --warmup).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing, allocation).", lower_bound=1)
flags.DEFINE_integer("rounds", 1, "Model runs per row, kbert and keras-hub alternating.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Sequences per step.", lower_bound=1)
flags.DEFINE_integer("sequence_length", 128, "Tokens per sequence.", lower_bound=4)
flags.DEFINE_integer("num_predictions", 20, "Masked positions per sequence.", lower_bound=1)
flags.DEFINE_integer("peak_repeats", 5, "Runs of each matmul shape; its best counts.", lower_bound=1)
flags.DEFINE_integer("intra_op_threads", 0, "TF intra-op threads (0: the cores this process may use).")
flags.DEFINE_integer("inter_op_threads", 1, "TF inter-op threads (0: TF's default).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train steps of both models (CPU: slower so far).")
flags.DEFINE_string("run_one", None, "Internal: MODEL,PRESET,POLICY,RESULT_JSON; time one model here.")


def _threads():
    return FLAGS.intra_op_threads or len(os.sched_getaffinity(0))


def _set_threads():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(_threads())
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)


def step_flops(config, batch_size, sequence_length, num_predictions):
    """FLOPs of one MLM+NSP train step by the formula in the module docstring."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch_size * sequence_length
    return (
        6 * tokens * layers * (4 * h * h + 2 * h * i)
        + 12 * layers * tokens * sequence_length * h
        + 6 * batch_size * num_predictions * (h * h + h * config.vocab_size)
        + 6 * batch_size * (h * h + 2 * h)
    )


def matmul_shapes(config, batch_size, sequence_length, num_predictions):
    """The step's matmul shapes `(m, k, n)` timed for the peak (see the module docstring)."""
    h, i, tokens = config.hidden_size, config.intermediate_size, batch_size * sequence_length
    return [
        (tokens, h, i),
        (tokens, i, h),
        (tokens, h, 3 * h),
        (batch_size * num_predictions, h, config.vocab_size),
    ]


def matmul_peak(shapes, dtype, repeats):
    """Best GFLOP/s of `tf.matmul` over `shapes` in `dtype`, each shape the best of `repeats`."""
    import tensorflow as tf

    best = 0.0
    for m, k, n in shapes:
        a = tf.cast(tf.random.normal((m, k)), dtype)
        b = tf.cast(tf.random.normal((k, n)), dtype)
        matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
        matmul(a, b).numpy()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, b).numpy()
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def _batch(np, with_hub_names):
    rng = np.random.default_rng(0)
    b, s, p = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.num_predictions
    x = {
        "token_ids": rng.integers(1000, VOCAB, (b, s)).astype("int32"),
        "segment_ids": np.repeat([[0] * (s // 2) + [1] * (s - s // 2)], b, 0).astype("int32"),
        "padding_mask": np.ones((b, s), "int32"),
        "masked_lm_positions": np.sort(
            np.stack([rng.choice(np.arange(1, s - 1), p, replace=False) for _ in range(b)]), -1
        ).astype("int32"),
    }
    if with_hub_names:
        x["mask_positions"] = x.pop("masked_lm_positions")
    y = {
        "masked_lm_logits": rng.integers(1000, VOCAB, (b, p)).astype("int32"),
        "next_sentence_logits": rng.integers(0, 2, (b,)).astype("int32"),
    }
    w = {"masked_lm_logits": np.ones((b, p), "float32"), "next_sentence_logits": np.ones((b,), "float32")}
    return x, y, w


def _kbert_model(config, policy):
    from kbert.models import BertEncoder, BertPretrainer

    return BertPretrainer(BertEncoder.from_bert_config(config, dtype=policy))


def _keras_hub_model(config, policy):
    import keras
    import keras_hub

    from kbert.checkpoints.keras_hub_bert import build_backbone

    backbone = build_backbone(config, dtype=policy)
    head = keras_hub.layers.MaskedLMHead(
        token_embedding=backbone.token_embedding,
        intermediate_activation="gelu",
        layer_norm_epsilon=1e-12,
        dtype=policy,
    )
    nsp = keras.layers.Dense(2, dtype="float32", name="next_sentence_head")
    positions = keras.Input((None,), dtype="int32", name="mask_positions")
    inputs = dict(backbone.input, mask_positions=positions)
    outputs = backbone({k: inputs[k] for k in backbone.input})
    return keras.Model(inputs, {
        "masked_lm_logits": head(outputs["sequence_output"], mask_positions=positions),
        "next_sentence_logits": nsp(outputs["pooled_output"]),
    })


def _run_one(model_name, preset, policy, path):
    """Builds, compiles and times one model in this process; writes its result as JSON."""
    _set_threads()
    import keras
    import numpy as np

    from kbert.models import preset_config
    from kbert.training import compile_pretrainer, create_adamw

    config = preset_config(preset, vocab_size=VOCAB)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    build = _kbert_model if model_name == "kbert" else _keras_hub_model
    model = build(config, policy)
    compile_pretrainer(model, create_adamw(1e-4, total_steps=1000), jit_compile=FLAGS.jit_compile)
    x, y, w = _batch(np, with_hub_names=model_name == "keras-hub")
    for _ in range(FLAGS.warmup):
        model.train_on_batch(x, y, sample_weight=w)
    times, cpu_times = [], []
    for _ in range(FLAGS.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train_on_batch(x, y, sample_weight=w)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    result = {
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu_times),
        "min_seconds": min(times),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)


def _forwarded_flags():
    names = ("steps", "warmup", "batch_size", "sequence_length", "num_predictions",
             "intra_op_threads", "inter_op_threads", "jit_compile")
    return [f"--{name}={FLAGS[name].value}" for name in names]


def _spawn(model_name, preset, policy, folder):
    path = os.path.join(folder, f"{model_name}_{preset}_{policy}.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "benchmarks.train_throughput",
               f"--run_one={model_name},{preset},{policy},{path}", *_forwarded_flags()]
    done = subprocess.run(command, cwd=_REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"error: {model_name} {preset} {policy} failed:\n{done.stderr[-4000:]}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _print_table(results, peaks, configs):
    b, s, p = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.num_predictions
    print(f"\nMLM+NSP train step, batch {b} x {s}, {p} predictions, AdamW, train_on_batch, jit_compile={FLAGS.jit_compile}; "
          f"median of {FLAGS.steps} steps, median of {FLAGS.rounds} round(s)")
    print("| preset | policy | model | s/step | seq/s | GFLOP/s | of matmul peak | kbert speedup | "
          "vs own float32 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset in FLAGS.presets:
        flops = step_flops(configs[preset], b, s, p)
        for policy in FLAGS.policies:
            peak = statistics.median(peaks["bfloat16" if "bfloat16" in policy else "float32"])
            hub = statistics.median(r["seconds"] for r in results[(preset, policy, "keras-hub")])
            for model_name in MODELS:
                rows = results[(preset, policy, model_name)]
                seconds = statistics.median(r["seconds"] for r in rows)
                own = results.get((preset, "float32", model_name))
                versus = statistics.median(r["seconds"] for r in own) / seconds if own else float("nan")
                achieved = flops / seconds / 1e9
                print(f"| {preset} | {policy} | {model_name} | {seconds:.3f} | {b / seconds:.1f} "
                      f"| {achieved:.1f} | {achieved / peak:.0%} | {hub / seconds:.2f}x | {versus:.2f}x "
                      f"| {max(r['max_rss_mb'] for r in rows):.0f} |")
        print(f"({preset}: {flops / 1e9:.1f} GFLOP/step, {results[(preset, FLAGS.policies[0], 'kbert')][0]['parameters']:,} "
              "kbert trainable parameters)")


def main(argv):
    del argv
    if FLAGS.run_one:
        model_name, preset, policy, path = FLAGS.run_one.split(",", 3)
        _run_one(model_name, preset, policy, path)
        return
    _set_threads()
    import importlib.metadata

    from kbert.models import preset_config
    from kbert.training.precision import (
        NATIVE_BFLOAT16_CPU_FLAGS,
        detect_hardware,
        resolve_mixed_precision,
    )

    hardware = detect_hardware()
    present = {f: ("yes" if f in hardware.cpu_flags else "no") for f in (*NATIVE_BFLOAT16_CPU_FLAGS, "amx_tile", "avx512f")}
    print(f"CPU: {hardware.cpu_model}, {os.cpu_count()} logical cores; "
          + ", ".join(f"{k}: {v}" for k, v in present.items())
          + f"; --mixed_precision=auto picks {resolve_mixed_precision('auto', hardware)}")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("tensorflow", "keras", "keras-hub"))
    print(f"{versions}; TF threads intra_op={_threads()}, inter_op={FLAGS.inter_op_threads or 'default'}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    configs = {preset: preset_config(preset, vocab_size=VOCAB) for preset in FLAGS.presets}
    shapes = sorted({shape for c in configs.values() for shape in matmul_shapes(
        c, FLAGS.batch_size, FLAGS.sequence_length, FLAGS.num_predictions)})
    peaks = {"float32": [], "bfloat16": []}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(FLAGS.rounds):
            for preset in FLAGS.presets:
                for policy in FLAGS.policies:
                    order = MODELS if round_index % 2 == 0 else MODELS[::-1]
                    for model_name in order:
                        for dtype, values in peaks.items():
                            values.append(matmul_peak(shapes, dtype, FLAGS.peak_repeats))
                        started = time.time()
                        result = _spawn(model_name, preset, policy, folder)
                        results.setdefault((preset, policy, model_name), []).append(result)
                        print(f"  round {round_index + 1}: {preset} {policy} {model_name}: "
                              f"{result['seconds']:.3f} s/step, peak RSS {result['max_rss_mb']:.0f} MB "
                              f"({time.time() - started:.0f} s; matmul peak now float32 "
                              f"{peaks['float32'][-1]:.0f}, bfloat16 {peaks['bfloat16'][-1]:.0f} GFLOP/s; "
                              f"load {os.getloadavg()[0]:.2f})", flush=True)
    print("\nMatmul peak (GFLOP/s, median of the measurements between model runs; shapes "
          + ", ".join(f"{m}x{k}x{n}" for m, k, n in shapes) + "): "
          + ", ".join(f"{d} {statistics.median(v):.1f} (range {min(v):.0f}-{max(v):.0f})" for d, v in peaks.items()))
    _print_table(results, peaks, configs)


if __name__ == "__main__":
    app.run(main)
