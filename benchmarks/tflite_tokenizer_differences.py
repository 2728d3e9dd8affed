r"""Lists the characters on which a TFLite-ready tokenizer differs from kbert's.

kbert's `BertTokenizer` normalises text with separate TensorFlow ops (BERT's
lower-case -> NFD -> strip accents, see `kbert.text.normalization`), which are
not TFLite ops. On device, only `FastBertTokenizer`'s built-in
`lower_case_nfd_strip_accents` normalisation can run, and it folds
compatibility characters (NFKC case folding). This program tokenizes every
Unicode code point alone with both and prints where the ids differ, grouped
into ranges with their Unicode categories (BUILD.md quotes the result).

  python -m benchmarks.tflite_tokenizer_differences --vocab_file=../shared/data/vocab/bert-base-uncased/vocab.txt
"""

import collections
import unicodedata

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("vocab_file", None, "An uncased BERT vocab.txt.")
flags.mark_flag_as_required("vocab_file")


def main(argv):
    del argv
    import tensorflow as tf
    import tensorflow_text as tf_text

    from kbert.text import BertTokenizer, load_vocabulary

    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = [chr(c) for c in points]
    ours = BertTokenizer(FLAGS.vocab_file, lowercase=True)
    device = tf_text.FastBertTokenizer(
        load_vocabulary(FLAGS.vocab_file), token_out_type=tf.int32,
        lower_case_nfd_strip_accents=True,
    )
    differing = []
    for start in range(0, len(texts), 65536):
        batch = tf.constant(texts[start:start + 65536])
        a = ours(batch).to_list()
        b = device.tokenize(batch).to_list()
        differing += [points[start + i] for i, (x, y) in enumerate(zip(a, b)) if x != y]
    ranges = []
    for c in differing:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    categories = collections.Counter(unicodedata.category(chr(c)) for c in differing)
    print(f"{len(differing)} of {len(points)} code points tokenize differently "
          f"(by category: {dict(categories.most_common())}).")
    for lo, hi in ranges:
        names = unicodedata.name(chr(lo), "?") + ("" if lo == hi else " .. " + unicodedata.name(chr(hi), "?"))
        print(f"U+{lo:04X}" + ("" if lo == hi else f"-U+{hi:04X}") + f"  {names}")


if __name__ == "__main__":
    app.run(main)
