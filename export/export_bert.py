r"""Exports a pretrained kbert encoder as a TF Serving SavedModel and a TFLite file.

Reads what `trainers.pretrain` wrote to --model_dir (encoder.keras,
bert_config.json, vocab.txt, tokenizer_config.json), writes
  OUTPUT_DIR/saved_model/bert/VERSION/   (TF Serving layout, text + id signatures)
  OUTPUT_DIR/bert.tflite                 (id inputs, fixed sequence length)
checks each against the Keras model (the SavedModel in a fresh process) and
prints a prediction from each.

Example:
  python -m export.export_bert --model_dir=runs/demo --output_dir=runs/demo/export
"""

import json
import os
import sys

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Folder written by trainers.pretrain.")
flags.DEFINE_string("output_dir", None, "Where to write the artifacts.")
flags.DEFINE_integer("sequence_length", 128, "Packed length of both exports.")
flags.DEFINE_integer("version", 1, "TF Serving model version.")
flags.DEFINE_multi_string("texts", ["The quick brown fox jumps over the lazy dog.", "A function returns a value."], "Sample texts for the checks; repeat the flag for more (commas stay inside a text).")
flags.DEFINE_float("atol", 1e-4, "Largest allowed abs difference from Keras.")
flags.mark_flags_as_required(["model_dir", "output_dir"])


def _head(vector, n=4):
    return "[" + ", ".join(f"{v:.4f}" for v in vector[:n]) + "]"


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from kbert import models, serving, text
    from kbert.training import runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    log = os.path.join(FLAGS.output_dir, "export.log")

    for name in ("encoder.keras", "bert_config.json", "vocab.txt"):
        if not os.path.exists(os.path.join(FLAGS.model_dir, name)):
            raise app.UsageError(f"{FLAGS.model_dir} has no {name}; run trainers.pretrain first.")
    lowercase = True
    tokenizer_config = os.path.join(FLAGS.model_dir, "tokenizer_config.json")
    if os.path.exists(tokenizer_config):
        with open(tokenizer_config) as f:
            values = json.load(f)
        # HuggingFace's key (written by kbert programs), or the older "lowercase".
        lowercase = bool(values.get("do_lower_case", values.get("lowercase", True)))
    vocab_path = os.path.join(FLAGS.model_dir, "vocab.txt")
    tokenizer = text.BertTokenizer(vocab_path, lowercase=lowercase)
    trained = keras.saving.load_model(os.path.join(FLAGS.model_dir, "encoder.keras"))
    # Export in float32 whatever policy training used.
    encoder = models.BertEncoder.from_bert_config(
        os.path.join(FLAGS.model_dir, "bert_config.json"), dtype="float32"
    )
    encoder.set_weights(trained.get_weights())

    base = os.path.join(FLAGS.output_dir, "saved_model", "bert")
    path = serving.export_saved_model(
        encoder, tokenizer, vocab_path, base, FLAGS.sequence_length, FLAGS.version
    )
    diff = serving.verify_saved_model(
        path, encoder, tokenizer, FLAGS.texts, FLAGS.sequence_length, FLAGS.atol
    )
    print(f"SavedModel: {path} (max abs diff vs Keras, fresh process: {diff:.2e})")
    result = serving.run_saved_model_in_fresh_process(path, FLAGS.texts)
    for sentence, pooled in zip(FLAGS.texts, result["pooled_output"]):
        print(f"  SavedModel pooled_output[:4] for {sentence!r}: {_head(pooled)}")

    tflite_path = os.path.join(FLAGS.output_dir, "bert.tflite")
    with runs.stderr_to_file(log):  # the converter's C++ logging goes to the log file
        serving.export_tflite(encoder, tflite_path, FLAGS.sequence_length, batch_size=1)
    special = tokenizer.special_token_ids
    packer = text.BertPacker(FLAGS.sequence_length, special["cls"], special["sep"], special["pad"])
    for sentence in FLAGS.texts:
        features = {k: v.numpy() for k, v in packer(tokenizer(tf.constant([sentence]))).items()}
        with runs.stderr_to_file(log):
            diff = serving.verify_tflite(tflite_path, encoder, features, FLAGS.atol)
            pooled = serving.run_tflite(tflite_path, features)["pooled_output"][0]
        print(
            f"  TFLite pooled_output[:4] for {sentence!r}: {_head(pooled)} "
            f"(max abs diff vs Keras: {diff:.2e})"
        )
    print(f"TFLite: {tflite_path} ({os.path.getsize(tflite_path) / 1e6:.1f} MB)")


if __name__ == "__main__":
    app.run(main)
