r"""Exports a pretrained BERT encoder for TF Serving and phones, validated before publishing.

--checkpoint takes anything `kbert.checkpoints.load` reads: a run folder of
`trainers.pretrain`, a HuggingFace folder (e.g. all-MiniLM-L6-v2), a Google or
Model Garden checkpoint, or a kbert `.keras` file. The vocabulary and casing come
from beside it (`vocab.txt`, `tokenizer_config.json`) unless given. Writes
  OUTPUT_DIR/saved_model/bert/VERSION/   (TF Serving layout: text, id, wordpiece and,
                                          with a masked-LM head, fill-mask signatures;
                                          a warmup file for every signature)
  OUTPUT_DIR/bert_vVERSION.tflite        (id inputs, fixed sequence length; float32)
  OUTPUT_DIR/bert_vVERSION_RECIPE.tflite (the other --tflite_recipes)
  OUTPUT_DIR/bert_text_vVERSION.tflite   (string input, tokenizer inside; --text_tflite)
VERSION is one past the newest already there (nothing is overwritten). Every file is
validated as `python -m export.validate` does (the SavedModel in a fresh process, the
TFLite files in LiteRT) before any is published; prints a prediction from each and
the validation table.

Examples:
  python -m export.export_bert --checkpoint=runs/demo --output_dir=runs/demo/export
  python -m export.export_bert --checkpoint=path/to/all-MiniLM-L6-v2 --output_dir=exports/minilm \
      --tflite_recipes=float32,dynamic_int8,int8_selective --representative_file=my_texts.txt
"""

import os
import sys

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Run folder of trainers.pretrain, HF folder, Google/Model Garden checkpoint or .keras file.")
flags.DEFINE_alias("model_dir", "checkpoint")
flags.DEFINE_string("output_dir", None, "Where to write the artifacts.")
flags.DEFINE_integer("sequence_length", 128, "Packed length of both exports.")
flags.DEFINE_integer("version", None, "TF Serving model version (default: one past the newest in --output_dir).")
flags.DEFINE_multi_string("texts", ["The quick brown fox jumps over the lazy dog.", "A function returns a value."], "Sample texts for the checks; repeat the flag for more (commas stay inside a text).")
flags.DEFINE_float("atol", None, "Largest allowed abs difference from Keras of the SavedModel and float32 files (default: the validator's, 1e-5 and 1e-4).")
flags.DEFINE_list("tflite_recipes", ["float32"], "Id-input TFLite files to write: float32, float16, dynamic_int8, int8_selective (see BUILD.md).")
flags.DEFINE_string("representative_file", None, "UTF-8 texts, one per line, calibrating int8_selective (a few hundred from your own data).")
flags.DEFINE_bool("text_tflite", True, "Also write the string-input TFLite file (tokenizer inside; needs tensorflow-text's TFLite ops).")
flags.DEFINE_string("config", None, "bert_config.json, for a checkpoint without one beside it.")
flags.DEFINE_string("vocab_file", None, "vocab.txt (default: the one beside --checkpoint).")
flags.DEFINE_bool("lowercase", None, "Tokenizer casing (default: tokenizer_config.json beside the vocabulary, else inferred from it).")
flags.DEFINE_integer("top_k", 5, "Tokens (with probabilities) the serving_fill_mask signature returns per [MASK].")
flags.DEFINE_multi_string("fill_mask_texts", ["The capital of France is [MASK]."], "Texts with [MASK] for the fill-mask check and printout (checkpoints with a masked-LM head).")
flags.mark_flags_as_required(["checkpoint", "output_dir"])


def _head(vector, n=4):
    return "[" + ", ".join(f"{v:.4f}" for v in vector[:n]) + "]"


def main(argv):
    del argv
    from kbert import checkpoints, serving
    from kbert.serving import encoder_export
    from kbert.training import runs
    from kbert.training.tasks.common import next_version

    runs.quiet_logging(FLAGS["verbosity"].present)
    base = encoder_export.saved_model_base(FLAGS.output_dir)
    version = FLAGS.version if FLAGS.version is not None else next_version(base)
    try:
        representative = None
        if FLAGS.representative_file:
            representative = runs.read_text_lines(FLAGS.representative_file, "--representative_file")
        elif "int8_selective" in FLAGS.tflite_recipes:
            raise ValueError("--tflite_recipes=int8_selective calibrates on your data: give "
                             "--representative_file (a few hundred texts, one per line).")
        result = encoder_export.export_encoder(
            FLAGS.checkpoint, FLAGS.output_dir, version, FLAGS.sequence_length, FLAGS.texts,
            FLAGS.atol, FLAGS.config, FLAGS.vocab_file, FLAGS.lowercase,
            log_path=os.path.join(FLAGS.output_dir, "export.log"),  # created after the checks
            top_k=FLAGS.top_k, fill_mask_texts=FLAGS.fill_mask_texts,
            tflite_recipes=FLAGS.tflite_recipes, representative_texts=representative,
            text_tflite=FLAGS.text_tflite,
        )
    except (OSError, ValueError, TypeError,
            checkpoints.CheckpointMismatchError, serving.ExportVerificationError) as e:
        print(f"export_bert: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Tokenizer: do_lower_case={result['lowercase']} ({result['lowercase_source']}).")
    print(f"SavedModel: {result['saved_model']} "
          f"(max abs diff vs Keras, fresh process: {result['saved_model_diff']:.2e})")
    for sentence, pooled in zip(FLAGS.texts, result["saved_model_pooled"]):
        print(f"  SavedModel pooled_output[:4] for {sentence!r}: {_head(pooled)}")
    filled = result["fill_mask"]
    if filled is None:
        print("  No masked-LM head in the checkpoint: no serving_fill_mask signature.")
    for i, sentence in enumerate(FLAGS.fill_mask_texts if filled is not None else ()):
        if filled["num_masks"][i] == 0:
            print(f"  SavedModel serving_fill_mask for {sentence!r}: no [MASK] within "
                  f"--sequence_length={FLAGS.sequence_length}.")
        for m in range(filled["num_masks"][i]):
            guesses = ", ".join(f"{str(token)!r} {p:.3g}" for token, p in zip(
                filled["top_tokens"][i, m], filled["top_probabilities"][i, m]))
            print(f"  SavedModel serving_fill_mask for {sentence!r}, [MASK] {m + 1}: {guesses}")
    if result["tflite_pooled"] is not None:
        for sentence, pooled in zip(FLAGS.texts, result["tflite_pooled"]):
            print(f"  TFLite pooled_output[:4] for {sentence!r}: {_head(pooled)}")
        print(f"TFLite: {result['tflite']} ({result['tflite_size'] / 2**20:.1f} MiB, "
              f"max abs diff vs Keras: {result['tflite_diff']:.2e})")
    print("Validated (python -m export.validate runs the same checks):")
    print(serving.format_report(result["reports"], FLAGS.output_dir))


if __name__ == "__main__":
    app.run(main)
