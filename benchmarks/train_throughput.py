r"""MLM training-step throughput: kbert vs keras-hub, measured in the same run.

One train step = forward + masked-LM loss + backward + AdamW update, batch 32,
sequence 128, 20 masked positions, `bert_small` (L=4, H=512, A=8, I=2048,
vocab 30522), through `model.train_on_batch` (no XLA). Both models are built
the same way: encoder -> MLM head tied to the token embedding (keras-hub:
`BertBackbone` + `MaskedLMHead`; kbert: `BertEncoder` + `MaskedLMHead`).

  python -m benchmarks.train_throughput --policies=float32,mixed_bfloat16 --steps=10
"""

import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to time.")
flags.DEFINE_integer("steps", 10, "Timed steps per model (after --warmup).")
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing, allocation).")
flags.DEFINE_integer("batch_size", 32, "Sequences per step.")
flags.DEFINE_integer("sequence_length", 128, "Tokens per sequence.")
flags.DEFINE_integer("num_predictions", 20, "Masked positions per sequence.")
flags.DEFINE_string("preset", "bert_small", "kbert preset; keras-hub gets the same sizes.")

VOCAB = 30522


def _batch(np):
    rng = np.random.default_rng(0)
    b, s, p = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.num_predictions
    x = {
        "token_ids": rng.integers(1000, VOCAB, (b, s)).astype("int32"),
        "segment_ids": np.repeat([[0] * (s // 2) + [1] * (s - s // 2)], b, 0).astype("int32"),
        "padding_mask": np.ones((b, s), "int32"),
        "masked_lm_positions": np.sort(rng.choice(np.arange(1, s - 1), (b, p)), -1).astype("int32"),
    }
    y = rng.integers(1000, VOCAB, (b, p)).astype("int32")
    return x, y, np.ones((b, p), "float32")


def _kbert_model(keras, config, policy):
    from kbert.layers import MaskedLMHead
    from kbert.models import BertEncoder

    encoder = BertEncoder.from_bert_config(config, dtype=policy)
    positions = keras.Input((None,), dtype="int32", name="masked_lm_positions")
    inputs = dict(encoder.input, masked_lm_positions=positions)
    sequence = encoder({k: inputs[k] for k in encoder.input})["sequence_output"]
    logits = MaskedLMHead(encoder.token_embedding, dtype=policy)(sequence, positions)
    return keras.Model(inputs, logits)


def _keras_hub_model(keras, config, policy):
    import keras_hub

    from kbert.checkpoints.keras_hub_bert import build_backbone

    backbone = build_backbone(config, dtype=policy)
    head = keras_hub.layers.MaskedLMHead(
        token_embedding=backbone.token_embedding,
        intermediate_activation="gelu",
        layer_norm_epsilon=1e-12,
        dtype=policy,
    )
    positions = keras.Input((None,), dtype="int32", name="masked_lm_positions")
    inputs = dict(backbone.input, mask_positions=positions)
    sequence = backbone({k: inputs[k] for k in backbone.input})["sequence_output"]
    return keras.Model(inputs, head(sequence, mask_positions=positions))


def _time(keras, model, x, y, w):
    from kbert.training import create_adamw

    model.compile(
        optimizer=create_adamw(1e-4, total_steps=1000),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    for _ in range(FLAGS.warmup):
        model.train_on_batch(x, y, sample_weight=w)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        model.train_on_batch(x, y, sample_weight=w)
    return (time.perf_counter() - start) / FLAGS.steps


def main(argv):
    del argv
    import keras
    import numpy as np

    from kbert.models import preset_config

    config = preset_config(FLAGS.preset, vocab_size=VOCAB)
    x, y, w = _batch(np)
    hub_x = dict(x)
    hub_x["mask_positions"] = hub_x.pop("masked_lm_positions")
    rows = []
    for policy in FLAGS.policies:
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        hub = _time(keras, _keras_hub_model(keras, config, policy), hub_x, y, w)
        ours = _time(keras, _kbert_model(keras, config, policy), x, y, w)
        rows.append((policy, ours, hub))
    b = FLAGS.batch_size
    print(f"\nMLM train step, {FLAGS.preset}, batch {b} x {FLAGS.sequence_length}, "
          f"{FLAGS.num_predictions} predictions, AdamW, {FLAGS.steps} steps")
    print("| policy | kbert s/step | keras-hub s/step | kbert seq/s | keras-hub seq/s | kbert speedup |")
    print("|---|---|---|---|---|---|")
    for policy, ours, hub in rows:
        print(f"| {policy} | {ours:.3f} | {hub:.3f} | {b / ours:.1f} | {b / hub:.1f} | {hub / ours:.2f}x |")


if __name__ == "__main__":
    app.run(main)
