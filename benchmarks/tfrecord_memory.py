r"""Peak memory of pretraining from sharded TFRecords, for 1x and 4x the data.

Each row is one program run in its own process, as a user runs it; its peak
resident memory (RSS) comes from the kernel (`os.wait4`'s `ru_maxrss`):

  create_pretraining_data  writes the corpus as TFRecord shards (streamed:
                           --buffer_documents documents held at a time);
  pretrain --input_files   trains bert_tiny from those shards (interleaved
                           reads, a 10,000-record shuffle buffer);
  pretrain --corpus        the same training from the text itself, which
                           reads, tokenizes and pairs the whole corpus in
                           memory first (the contrast).

Data: WikiText-2 valid + test (2.4 MB of text; the train split is not in the
shared data) is "1x"; "4x" is four copies of it as four files, written with
4x the shards. Every training run makes the same number of steps with the
same batch, so only the data size differs between the 1x and 4x rows.

  python -m benchmarks.tfrecord_memory --steps=50
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

FLAGS = flags.FLAGS
flags.DEFINE_list("scales", ["1", "4"], "Data sizes, in copies of WikiText-2 valid + test.")
flags.DEFINE_integer("steps", 50, "Training steps per pretrain run.", lower_bound=1)
flags.DEFINE_integer("global_batch_size", 32, "Examples per step.", lower_bound=1)
flags.DEFINE_integer("sequence_length", 128, "Tokens per example.", lower_bound=8)
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked-LM slots per example.", lower_bound=1)
flags.DEFINE_integer("dupe_factor", 2, "Passes over the corpus when writing records (and for --corpus).", lower_bound=1)
flags.DEFINE_integer("shards_per_copy", 4, "TFRecord shards per copy of the data.", lower_bound=1)
flags.DEFINE_integer("buffer_documents", 500, "create_pretraining_data's --buffer_documents.", lower_bound=2)
flags.DEFINE_string("work_dir", None, "Folder for the corpus copies, records and runs (default: a temporary one).")


def _measure(module, *args):
    """Runs `python -m module args` to its end; returns (peak RSS in MiB, seconds, output).

    Prints a progress line (the run and its numbers) to stderr.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=_REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"error: {module} {' '.join(args)} failed:\n{output[-3000:]}")
    print(f"{module} {args[0]}: {usage.ru_maxrss / 1024:.0f} MiB, {seconds:.0f} s",
          file=sys.stderr, flush=True)
    return usage.ru_maxrss / 1024, seconds, output


def _corpus(folder, copies):
    """`copies` files, each WikiText-2 valid followed by test."""
    paths = []
    for i in range(copies):
        path = os.path.join(folder, f"wikitext2_copy{i}.txt")
        with open(path, "wb") as out:
            for name in ("wiki.valid.tokens", "wiki.test.tokens"):
                with open(os.path.join(_SHARED, "wikitext-2", name), "rb") as f:
                    out.write(f.read())
        paths.append(path)
    return paths


def main(argv):
    del argv
    vocab = os.path.join(_SHARED, "vocab", "bert-base-uncased", "vocab.txt")
    if not os.path.isfile(vocab):
        sys.exit(f"error: shared data not found: {vocab} (set KBERT_SHARED_DATA)")
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="tfrecord_memory_")
    lengths = [f"--max_predictions_per_seq={FLAGS.max_predictions_per_seq}"]
    train = [f"--vocab_file={vocab}", f"--global_batch_size={FLAGS.global_batch_size}",
             f"--sequence_length={FLAGS.sequence_length}", *lengths,
             f"--train_steps={FLAGS.steps}", f"--checkpoint_every={FLAGS.steps}",
             "--preset=bert_tiny"]
    rows = []
    for scale in (int(s) for s in FLAGS.scales):
        folder = os.path.join(work, f"x{scale}")
        os.makedirs(folder, exist_ok=True)
        corpus = _corpus(folder, scale)
        text_mb = sum(os.path.getsize(p) for p in corpus) / 1e6
        shards = FLAGS.shards_per_copy * scale
        peak, seconds, output = _measure(
            "trainers.create_pretraining_data", f"--input_file={','.join(corpus)}",
            f"--vocab_file={vocab}", f"--output_files={folder}/wiki.tfrecord",
            f"--num_shards={shards}", f"--max_seq_length={FLAGS.sequence_length}", *lengths,
            f"--dupe_factor={FLAGS.dupe_factor}", f"--buffer_documents={FLAGS.buffer_documents}",
            "--overwrite")
        written = json.loads(output.strip().splitlines()[-1])
        records_mb = sum(os.path.getsize(p) for p in written["files"]) / 1e6
        rows.append((f"create_pretraining_data ({shards} shards)", scale,
                     f"{text_mb:.1f} MB text -> {written['examples']} examples", peak, seconds))
        peak, seconds, _ = _measure("trainers.pretrain", f"--model_dir={folder}/run_records",
                                    f"--input_files={folder}/wiki.tfrecord-*", *train)
        rows.append(("pretrain --input_files", scale, f"{records_mb:.1f} MB records", peak, seconds))
        peak, seconds, _ = _measure("trainers.pretrain", f"--model_dir={folder}/run_corpus",
                                    f"--corpus={','.join(corpus)}",
                                    f"--dupe_factor={FLAGS.dupe_factor}", *train)
        rows.append(("pretrain --corpus (in memory)", scale, f"{text_mb:.1f} MB text", peak, seconds))

    print(f"\nPeak RSS per process (bert_tiny, batch {FLAGS.global_batch_size} x "
          f"{FLAGS.sequence_length}, {FLAGS.steps} steps; dupe_factor {FLAGS.dupe_factor}; "
          f"--buffer_documents {FLAGS.buffer_documents}; work dir {work})")
    print("| run | data | input | peak RSS (MiB) | seconds |\n|---|---|---|---|---|")
    for name, scale, what, peak, seconds in sorted(rows, key=lambda r: (r[0].split(" (")[0], r[1])):
        print(f"| {name} | {scale}x | {what} | {peak:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    app.run(main)
