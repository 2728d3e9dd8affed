r"""Validates kbert exports the way their consumers load them, against the Keras model.

  python -m export.validate PATH [--model=CHECKPOINT]

PATH is an artifact (a SavedModel folder, a .tflite file) or a folder holding
them (the --output_dir of export.export_bert, a fine-tuning run's export/).
Each SavedModel is loaded in a fresh process as TF Serving would and its warmup
requests are run; each TFLite file runs in the LiteRT interpreter with its inputs
bound by name. Prints one row per artifact (size, max abs difference, cosine and
label agreement against the Keras model, median batch-1 latency) and exits 1 if
any artifact is outside its tolerance (kbert.serving.validate.TOLERANCES).

--model defaults to the model.keras (fine-tuning) or encoder.keras (pretraining)
found in PATH or the folders above it.

Examples:
  python -m export.validate runs/demo/export
  python -m export.validate exports/minilm --model=path/to/all-MiniLM-L6-v2
"""

import os
import sys
from contextlib import nullcontext

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The Keras model or checkpoint the export came from (default: found beside PATH).")
flags.DEFINE_multi_string("texts", None, "Sample texts (repeatable; default: kbert.serving.validate.SAMPLE_TEXTS).")
flags.DEFINE_string("texts_file", None, "A UTF-8 file of sample texts, one per line (e.g. your own data).")
flags.DEFINE_integer("runs", 20, "Timed batch-1 calls per artifact.", lower_bound=20)


def main(argv):
    if len(argv) != 2:
        print("validate: give one PATH (an artifact or a folder of them).", file=sys.stderr)
        sys.exit(2)
    from kbert.serving import validate
    from kbert.training import runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    texts = list(FLAGS.texts or [])
    try:
        if FLAGS.texts_file:
            texts += runs.read_text_lines(FLAGS.texts_file, "--texts_file")
        # The TFLite runtime announces its delegate from C++ on stderr; keep that
        # out of the table unless --verbosity asks for it.
        quiet = runs.stderr_to_file(os.devnull) if not FLAGS["verbosity"].present else nullcontext()
        with quiet:
            reports = validate.validate_export(
                argv[1], FLAGS.model, texts=texts or validate.SAMPLE_TEXTS, runs=FLAGS.runs)
    except (OSError, ValueError, UnicodeDecodeError, validate.ValidationError) as e:
        print(f"validate: {e}", file=sys.stderr)
        sys.exit(1)
    print(validate.format_report(reports, argv[1]))
    failed = [r for r in reports if not r.passed]
    print(f"{len(reports) - len(failed)} of {len(reports)} artifacts passed.")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
