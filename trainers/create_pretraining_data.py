r"""Writes BERT pretraining TFRecords (masked LM + next sentence) from plain-text files.

The records are google-research/bert's and tf-models-official's
(`input_ids`, `input_mask`, `segment_ids`, `masked_lm_positions`,
`masked_lm_ids`, `masked_lm_weights`, `next_sentence_labels`), so their
readers and `trainers.pretrain --input_files` both read them. The corpus is
streamed: memory holds --buffer_documents documents at a time, not the
corpus (see `kbert.data.tfrecord_writer.write_pretraining_tfrecords`, which also
says what that changes against google-research/bert).

Input format (as google-research/bert): UTF-8 text, blank lines between
documents; lines are further split into sentences at `.`, `!`, `?`.

Example (WikiText-2 valid, 4 shards):
  python -m trainers.create_pretraining_data \
      --input_file=../shared/data/wikitext-2/wiki.valid.tokens \
      --vocab_file=../shared/data/vocab/bert-base-uncased/vocab.txt \
      --output_files=data/wiki.tfrecord --num_shards=4 --dupe_factor=5
writes data/wiki.tfrecord-00000-of-00004 ... -00003-of-00004 and prints one
summary line (JSON). A failed start (bad flag, missing or non-UTF-8 input,
existing output without --overwrite) prints one `error:` line, exits with 1
and writes nothing.
"""

import json
import os
import sys

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("input_file", None, "Corpus text files or globs (comma-separated).")
flags.DEFINE_list("output_files", None, "TFRecord files to write (comma-separated), or one name with --num_shards.")
flags.DEFINE_integer("num_shards", 1, "Shards to write as NAME-0000i-of-0000N from one --output_files name.", lower_bound=1)
flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt.")
flags.DEFINE_bool("do_lower_case", None, "Uncased tokenization (default: the casing of --vocab_file, from the tokenizer_config.json beside it or inferred from its tokens).")
flags.DEFINE_integer("max_seq_length", 128, "Tokens per example, with [CLS] and [SEP]s.", lower_bound=8)
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked-LM slots per example.", lower_bound=1)
flags.DEFINE_float("masked_lm_prob", 0.15, "Share of tokens masked (0 writes unmasked records).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter target length.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("dupe_factor", 10, "Passes over the corpus, each with other pairs and masks.", lower_bound=1)
flags.DEFINE_bool("do_whole_word_mask", False, "Mask whole words (all their ## pieces) instead of single pieces.")
flags.DEFINE_integer("random_seed", 12345, "Seed for pairing, shuffling and masking.")
flags.DEFINE_integer("buffer_documents", 1000, "Documents held at once (random next segments come from them).", lower_bound=2)
flags.DEFINE_bool("overwrite", False, "Replace output files that exist.")
flags.mark_flags_as_required(["input_file", "output_files", "vocab_file"])


def _fail(message):
    """Stops with a one-line error (no usage dump) and exit code 1."""
    sys.exit(f"error: {message}")


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag reported in one line and exit code 1."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(e)


def _output_files():
    """The files to write, checked: shard names, existing files, folders.

    Raises:
        ValueError: the flag and the problem named.
    """
    from kbert.data import tfrecord_writer

    if FLAGS.num_shards > 1:
        if len(FLAGS.output_files) != 1:
            raise ValueError(
                f"--num_shards={FLAGS.num_shards} takes one --output_files name; "
                f"received {len(FLAGS.output_files)}."
            )
        paths = tfrecord_writer.shard_paths(FLAGS.output_files[0], FLAGS.num_shards)
    else:
        paths = list(FLAGS.output_files)
    if len(set(paths)) != len(paths):
        raise ValueError(f"--output_files names a file twice: {paths}.")
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"--output_files: {path} is a folder.")
        if os.path.exists(path) and not FLAGS.overwrite:
            raise ValueError(f"--output_files: {path} exists; pass --overwrite to replace it.")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"--output_files: the folder {folder} does not exist.")
    return paths


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    from kbert.training import runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    from kbert import data, text
    from kbert.checkpoints import tokenizer_files
    from kbert.data import corpus, tfrecord_writer

    try:
        outputs = _output_files()
        config = data.PretrainingDataConfig(
            sequence_length=FLAGS.max_seq_length,
            max_predictions_per_seq=FLAGS.max_predictions_per_seq,
            masked_lm_prob=FLAGS.masked_lm_prob,
            short_seq_prob=FLAGS.short_seq_prob,
            dupe_factor=FLAGS.dupe_factor,
            seed=FLAGS.random_seed,
        )
    except ValueError as e:
        msg = str(e).replace("sequence_length", "max_seq_length")
        _fail(msg if msg.startswith("--") else f"--{msg}")
    if not os.path.isfile(FLAGS.vocab_file):
        _fail(f"--vocab_file={FLAGS.vocab_file} does not exist or is not a file.")
    try:
        lowercase = FLAGS.do_lower_case
        if lowercase is None:
            lowercase = tokenizer_files.read_do_lower_case(FLAGS.vocab_file)[0]
        tokenizer = text.BertTokenizer(FLAGS.vocab_file, lowercase=lowercase)
    except (OSError, ValueError) as e:
        _fail(f"--vocab_file={FLAGS.vocab_file}: {e}")
    try:
        corpus.corpus_files(FLAGS.input_file)
        summary = tfrecord_writer.write_pretraining_tfrecords(
            FLAGS.input_file, outputs, tokenizer, config,
            whole_word_mask=FLAGS.do_whole_word_mask, buffer_documents=FLAGS.buffer_documents,
        )
    except (OSError, ValueError) as e:
        _fail(f"--input_file: {e}")
    print(json.dumps({
        "files": summary.files,
        "examples": summary.examples,
        "documents_per_pass": summary.documents,
        "dupe_factor": FLAGS.dupe_factor,
        "max_seq_length": FLAGS.max_seq_length,
        "max_predictions_per_seq": FLAGS.max_predictions_per_seq,
        "do_whole_word_mask": FLAGS.do_whole_word_mask,
        "do_lower_case": bool(lowercase),
        "masked_share": round(summary.predictions / max(summary.masked_tokens, 1), 4),
        "random_next_share": round(summary.random_next / max(summary.examples, 1), 4),
        "seconds": round(summary.seconds, 1),
    }), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
