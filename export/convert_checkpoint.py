r"""Converts a BERT checkpoint on disk (HuggingFace, Google TF1, Model Garden) to another layout.

Reads any format `kbert.checkpoints.load` detects and writes HuggingFace, Google TF1
or a kbert `.keras` file, checking the written copy against the source. The source's
vocabulary travels with it, with its casing (`tokenizer_config.json`'s `do_lower_case`, or
inferred from the vocabulary); for `--format=keras` they are written beside the `.keras` file.
Nothing existing is overwritten, and a failure leaves nothing behind.

Examples:
  python -m export.convert_checkpoint --source=path/to/hf_folder --output=out/bert_model.ckpt --format=google
  python -m export.convert_checkpoint --source=out/bert_model.ckpt --output=out/hf --format=huggingface
  python -m export.convert_checkpoint --source=path/to/hf_folder --output=out/encoder.keras --format=keras
"""

import os
import sys

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "HF folder, Google/Model Garden checkpoint prefix or folder.")
flags.DEFINE_string("output", None, "Output folder (huggingface), prefix (google) or .keras file.")
flags.DEFINE_enum("format", "huggingface", ["huggingface", "google", "keras"], "Output format.")
flags.DEFINE_bool("pretraining", False, "Convert the masked-LM and NSP heads too.")
flags.DEFINE_string("config", None, "bert_config.json / config.json if none lies beside --source.")
flags.DEFINE_string("hidden_act", None, "Override the activation (e.g. gelu for exact GELU).")
flags.DEFINE_string("vocab_file", None, "vocab.txt to ship (default: the source's, if any).")
flags.DEFINE_bool("lowercase", None, "The tokenizer's casing (default: the source's tokenizer_config.json, else inferred from the vocabulary).")
flags.mark_flags_as_required(["source", "output"])


def main(argv):
    del argv
    from kbert import checkpoints
    from kbert.training import runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    try:
        convert()
    except (FileNotFoundError, FileExistsError, ValueError, checkpoints.CheckpointMismatchError) as e:
        print(f"convert_checkpoint: {e}", file=sys.stderr)
        sys.exit(1)


def convert():
    import numpy as np

    from kbert import checkpoints
    from kbert.checkpoints import tokenizer_files
    from kbert.staging import staged_folder

    if FLAGS.format == "keras" and not FLAGS.output.endswith(".keras"):
        raise ValueError(f"--output={FLAGS.output} must end in .keras with --format=keras.")
    model = checkpoints.load(
        FLAGS.source, pretraining=FLAGS.pretraining, config=FLAGS.config, hidden_act=FLAGS.hidden_act
    )
    vocab = FLAGS.vocab_file
    if vocab is None:
        try:
            vocab = tokenizer_files.find_vocabulary(FLAGS.source)
        except (FileNotFoundError, ValueError):
            vocab = None  # weights only
    lowercase = FLAGS.lowercase
    if vocab is not None and lowercase is None:
        lowercase, found_in = tokenizer_files.read_do_lower_case(vocab)
        print(f"Tokenizer casing: do_lower_case={lowercase} ({found_in}).")
    if FLAGS.format == "keras":
        import keras

        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        names = [os.path.basename(FLAGS.output)]
        if vocab is not None:
            encoder = model.encoder if hasattr(model, "encoder") else model
            tokenizer_files.check_vocabulary(vocab, encoder.bert_config.vocab_size)
            names += [tokenizer_files.VOCAB_FILE, tokenizer_files.TOKENIZER_CONFIG_FILE]
        with staged_folder(folder, names) as stage:
            model.save(os.path.join(stage, names[0]))
            if vocab is not None:
                tokenizer_files.write_tokenizer_files(stage, vocab, lowercase)
        written = FLAGS.output
        reloaded = keras.saving.load_model(written)
    else:
        written = checkpoints.save(
            model, FLAGS.output, format=FLAGS.format, vocab_path=vocab, lowercase=lowercase
        )
        reloaded = checkpoints.load(written, pretraining=FLAGS.pretraining)
    before = checkpoints.read_model(model)
    after = checkpoints.read_model(reloaded)
    worst = max(float(np.abs(before[name] - after[name]).max()) for name in before)
    if worst > 0:
        raise SystemExit(f"The written checkpoint differs from the source by {worst}.")
    if vocab is not None:
        reread, _ = tokenizer_files.read_do_lower_case(tokenizer_files.find_vocabulary(written))
        if reread != lowercase:
            raise SystemExit(f"The written tokenizer_config.json says do_lower_case={reread}, not {lowercase}.")
    print(f"Wrote {written} ({FLAGS.format}); {len(before)} arrays, identical on reload.")


if __name__ == "__main__":
    app.run(main)
