r"""Converts a BERT checkpoint on disk (HuggingFace, Google TF1, Model Garden) to another layout.

Reads any format `kbert.checkpoints.load` detects and writes HuggingFace, Google TF1
or a kbert `.keras` file, checking the written copy against the source.

Examples:
  python -m export.convert_checkpoint --source=path/to/hf_folder --output=out/bert_model.ckpt --format=google
  python -m export.convert_checkpoint --source=out/bert_model.ckpt --output=out/hf --format=huggingface
  python -m export.convert_checkpoint --source=path/to/hf_folder --output=out/encoder.keras --format=keras
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "HF folder, Google/Model Garden checkpoint prefix or folder.")
flags.DEFINE_string("output", None, "Output folder (huggingface), prefix (google) or .keras file.")
flags.DEFINE_enum("format", "huggingface", ["huggingface", "google", "keras"], "Output format.")
flags.DEFINE_bool("pretraining", False, "Convert the masked-LM and NSP heads too.")
flags.DEFINE_string("config", None, "bert_config.json / config.json if none lies beside --source.")
flags.DEFINE_string("hidden_act", None, "Override the activation (e.g. gelu for exact GELU).")
flags.DEFINE_string("vocab_file", None, "vocab.txt to ship (default: the source's, if any).")
flags.mark_flags_as_required(["source", "output"])


def main(argv):
    del argv
    import numpy as np

    from kbert import checkpoints

    model = checkpoints.load(
        FLAGS.source, pretraining=FLAGS.pretraining, config=FLAGS.config, hidden_act=FLAGS.hidden_act
    )
    vocab = FLAGS.vocab_file
    source_dir = FLAGS.source if os.path.isdir(FLAGS.source) else os.path.dirname(FLAGS.source)
    if vocab is None and os.path.exists(os.path.join(source_dir, "vocab.txt")):
        vocab = os.path.join(source_dir, "vocab.txt")
    if FLAGS.format == "keras":
        model.save(FLAGS.output)
        written = FLAGS.output
        import keras

        reloaded = keras.saving.load_model(written)
    else:
        written = checkpoints.save(model, FLAGS.output, format=FLAGS.format, vocab_path=vocab)
        reloaded = checkpoints.load(written, pretraining=FLAGS.pretraining)
    before = checkpoints.read_model(model)
    after = checkpoints.read_model(reloaded)
    worst = max(float(np.abs(before[name] - after[name]).max()) for name in before)
    if worst > 0:
        raise SystemExit(f"The written checkpoint differs from the source by {worst}.")
    print(f"Wrote {written} ({FLAGS.format}); {len(before)} arrays, identical on reload.")


if __name__ == "__main__":
    app.run(main)
