"""Fine-tuning data: GLUE TSV reading (SST-2), text pairs against HuggingFace and google-research's
`_truncate_seq_pair`, `padding="longest"`, length-bucketed batch plans, padded batches, and the
GLUE metrics against scikit-learn and scipy.

References are independent of the code under test: the raw files read with plain Python,
`transformers.BertTokenizerFast` on the same vocabulary, a hand-written `_truncate_seq_pair`,
NumPy padding, scikit-learn and scipy.stats.
"""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from kbert.data import (
    batches_per_epoch,
    encode_texts,
    padded_batches_dataset,
    plan_batches,
    read_tsv,
    text_dataset,
)
from kbert.metrics import (
    accuracy,
    f1,
    matthews_correlation,
    pearson_correlation,
    spearman_correlation,
)
from kbert.text import BertPacker, BertTextPreprocessor
from tests.conftest import SHARED_DATA

SST2 = SHARED_DATA / "glue" / "SST-2"
CLS, SEP, PAD = 101, 102, 0  # Google's uncased vocabulary


def _sst2(name):
    path = SST2 / name
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set KBERT_SHARED_DATA)")
    return str(path)


def _plain_rows(path):
    """(sentence, label) pairs of a GLUE TSV file, with str.split only."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0].split("\t") == ["sentence", "label"]
    return [tuple(line.split("\t")) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="module")
def hf_tokenizer(uncased_vocab):
    transformers = pytest.importorskip("transformers")
    # transformers 5 takes the vocabulary as `vocab=` (a `vocab_file=` keyword is silently
    # ignored and leaves a 5-token vocabulary), so check that it loaded.
    tokenizer = transformers.BertTokenizerFast(vocab=uncased_vocab, do_lower_case=True)
    assert tokenizer.vocab_size == 30522
    assert tokenizer("hello naïve café", add_special_tokens=False)["input_ids"] == [7592, 15743, 7668]
    return tokenizer


@pytest.fixture(scope="module")
def dev_rows():
    return _plain_rows(_sst2("dev.tsv"))


# --------------------------------------------------------------------------- read_tsv


@pytest.mark.parametrize("name,count", [("train.tsv", 67_349), ("dev.tsv", 436)])
def test_sst2_counts_and_label_balance(name, count):
    rows = _plain_rows(_sst2(name))
    assert len(rows) == count
    examples = read_tsv(_sst2(name), ["sentence"], "label")
    assert len(examples) == count and examples.label_list == ["0", "1"]
    assert examples.labels.dtype == np.int32
    plain = collections.Counter(label for _, label in rows)
    assert np.bincount(examples.labels).tolist() == [plain["0"], plain["1"]]
    assert examples.labels.tolist() == [int(label) for _, label in rows]
    assert examples.texts[0] == [sentence.strip() for sentence, _ in rows]
    assert examples.lines[:3] == [2, 3, 4] and examples.lines[-1] == count + 1
    if name == "dev.tsv":
        assert (plain["0"], plain["1"]) == (208, 228)  # counted with awk as well


def _write(tmp_path, text, name="data.tsv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_tsv_pairs_regression_and_unlabelled(tmp_path):
    path = _write(tmp_path, "id\tsentence1\tsentence2\tscore\n"
                            "a\tA man plays.\t A man is playing. \t4.75\n"
                            "\n"
                            "b\tA dog.\tA cat.\t0.5\n")
    ex = read_tsv(path, ["sentence1", "sentence2"], "score", regression=True)
    assert ex.texts == [["A man plays.", "A dog."], ["A man is playing.", "A cat."]]
    assert ex.labels.dtype == np.float32 and ex.labels.tolist() == [4.75, 0.5]
    assert ex.label_list is None and ex.lines == [2, 4]  # the blank line is skipped
    unlabelled = read_tsv(path, ["sentence2"])
    assert unlabelled.labels is None and unlabelled.texts == [["A man is playing.", "A cat."]]
    # Integer class names sort as numbers, not as strings ("10" after "9").
    path = _write(tmp_path, "s\tl\n" + "".join(f"t{i}\t{i}\n" for i in (10, 9, 2, 9)), "num.tsv")
    ex = read_tsv(path, ["s"], "l")
    assert ex.label_list == ["2", "9", "10"] and ex.labels.tolist() == [2, 1, 0, 1]
    # An evaluation file mapped with the training file's list.
    ex = read_tsv(path, ["s"], "l", label_list=["10", "9", "2", "7"])
    assert ex.labels.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize(
    "text,kwargs,message",
    [
        ("sentence\tlabel\ngood\t1\n \t0\n", {}, r"data\.tsv:3: empty text in column 'sentence'"),
        ("sentence\tlabel\ngood\t1\nbad\t0\nodd\t2\n", {"label_list": ["0", "1"]},
         r"data\.tsv:4: label '2' is not one of the training labels \['0', '1'\]"),
        ("text\tlabel\ngood\t1\n", {},
         r"data\.tsv: no column \['sentence'\] in the header \['text', 'label'\]"),
        ("sentence\tlabel\ngood\t1\nbad\n", {},
         r"data\.tsv:3: 1 fields, but column 'label' is field 2 of the header"),
        ("sentence\tlabel\ngood\t1\nbad\tzero\n", {"regression": True},
         r"data\.tsv:3: regression label 'zero' in column 'label' is not a finite number"),
        ("sentence\tlabel\ngood\t1\nbad\tnan\n", {"regression": True},
         r"data\.tsv:3: regression label 'nan' in column 'label' is not a finite number"),
        ("sentence\tlabel\ngood\t1\na\tb\t1\n", {},
         r"data\.tsv:3: 3 fields, but the header has 2: 'a\\tb\\t1'"),
        ("sentence\tlabel\ngood\t1.5\nbad\t0.25\n", {},
         r"data\.tsv: column 'label' holds scores such as '0\.25' .*use regression"),
        (b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n", {},
         r"data\.tsv:3: not UTF-8 \(byte 0xe9 at column 4\)"),
        ("sentence\tlabel\ngood\t1\nfine\t1\n", {},
         r"data\.tsv: column 'label' holds one class only \(\['1'\]\)"),
        ("sentence\tlabel\n", {}, r"data\.tsv has a header but no examples"),
        ("", {}, r"data\.tsv is empty"),
        # An empty label is not a class of its own ('' would also sort '10' before '2').
        ("sentence\tlabel\ngood\t1\nbad\t0\nmissing\t\nten\t10\n", {},
         r"data\.tsv:4: empty label in column 'label'"),
        ("sentence\tlabel\ngood\t1.5\nmissing\t \n", {"regression": True},
         r"data\.tsv:3: empty label in column 'label'"),
    ],
    ids=["empty_text", "unknown_label", "missing_column", "too_few_fields", "regression_label",
         "nan_label", "extra_field", "fractional_classes", "not_utf8",
         "one_class", "header_only", "empty_file", "empty_label", "empty_regression_label"],
)
def test_read_tsv_bad_input_names_file_line_and_value(tmp_path, text, kwargs, message):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        read_tsv(path, ["sentence"], "label", **kwargs)


def test_read_tsv_byte_order_mark(tmp_path):
    path = _write(tmp_path, "\ufeffsentence\tlabel\ngood\t1\nbad\t0\n")
    assert read_tsv(path, ["sentence"], "label").labels.tolist() == [1, 0]


def test_read_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_tsv(str(tmp_path / "nope.tsv"), ["sentence"], "label")
    with pytest.raises(ValueError, match="one or two columns"):
        read_tsv(_write(tmp_path, "a\tb\tc\n"), ["a", "b", "c"])


# ------------------------------------------------------------------ two-segment packing


def truncate_seq_pair(tokens_a, tokens_b, max_length):
    """google-research/bert `run_classifier._truncate_seq_pair`, written out again."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return tokens_a, tokens_b


def _pack(tokens_a, tokens_b, length):
    ids = [CLS] + tokens_a + [SEP] + tokens_b + [SEP]
    segments = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
    pad = length - len(ids)
    return ids + [PAD] * pad, segments + [0] * pad, [1] * len(ids) + [0] * pad


def test_truncate_seq_pair_rule_by_hand():
    # Hand-worked: 6 + 3 pieces into 5 -> pop A to 3 (3 + 3 = 6 > 5), tie pops B.
    assert truncate_seq_pair("abcdef", "xyz", 5) == (list("abc"), list("xy"))
    assert truncate_seq_pair("ab", "uvwxyz", 5) == (list("ab"), list("uvw"))
    assert truncate_seq_pair("abcde", "uvwxyz", 5) == (list("abc"), list("uv"))
    assert truncate_seq_pair("", "uvwxyz", 2) == ([], list("uv"))


def test_packer_trims_pairs_like_truncate_seq_pair_exhaustively():
    lengths = [(a, b) for a in range(8) for b in range(8)]
    seg_a = tf.ragged.constant([list(range(1000, 1000 + a)) for a, _ in lengths], tf.int32)
    seg_b = tf.ragged.constant([list(range(2000, 2000 + b)) for _, b in lengths], tf.int32)
    for sequence_length in range(3, 14):
        out = BertPacker(sequence_length, CLS, SEP, PAD)([seg_a, seg_b])
        out = {k: v.numpy().tolist() for k, v in out.items()}
        for row, (a, b) in enumerate(lengths):
            kept = truncate_seq_pair(range(1000, 1000 + a), range(2000, 2000 + b), sequence_length - 3)
            ids, segments, mask = _pack(*kept, sequence_length)
            assert out["token_ids"][row] == ids, (sequence_length, a, b)
            assert out["segment_ids"][row] == segments
            assert out["padding_mask"][row] == mask


TRICKY_PAIRS = [
    ("Héllo, WORLD!", "naïve café"),
    ("I love 北京 !", "AT&T's ½ price (1895–1943)"),
    ("a", "the unaffable, unbelievably tiresome performances of everyone involved"),
    ("the unaffable, unbelievably tiresome performances of everyone involved", "a"),
    ("one two three four five", "six seven eight nine ten"),  # equal lengths
]


def _pairs(dev_rows):
    sentences = [sentence for sentence, _ in dev_rows]
    return TRICKY_PAIRS + list(zip(sentences[:-1], sentences[1:]))


def _hf_pieces(hf_tokenizer, texts):
    return hf_tokenizer(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("sequence_length", [12, 16, 31, 64])
def test_pairs_match_huggingface_and_truncate_seq_pair(uncased_tokenizer, hf_tokenizer, dev_rows,
                                                       sequence_length):
    pairs = _pairs(dev_rows)
    text, text_pair = [a for a, _ in pairs], [b for _, b in pairs]
    kbert = BertTextPreprocessor(uncased_tokenizer, sequence_length)((text, text_pair))
    kbert = {k: v.numpy() for k, v in kbert.items()}
    hf = hf_tokenizer(text, text_pair, truncation="longest_first", max_length=sequence_length,
                      padding="max_length", return_tensors="np")
    budget = sequence_length - 3
    compared = trimmed = diverged = 0
    for row, (a, b) in enumerate(zip(_hf_pieces(hf_tokenizer, text),
                                     _hf_pieces(hf_tokenizer, text_pair))):
        # google-research/bert's rule on HF's word pieces: kbert follows it on every row.
        ids, segments, mask = _pack(*truncate_seq_pair(a, b, budget), sequence_length)
        assert kbert["token_ids"][row].tolist() == ids, pairs[row]
        assert kbert["segment_ids"][row].tolist() == segments
        assert kbert["padding_mask"][row].tolist() == mask
        # HF's "longest_first" gives the odd leftover piece to the longer segment (B on a
        # tie), google-research's to A: they differ when both segments are cut to half an
        # odd budget and B is at least as long as A.
        if budget % 2 and min(len(a), len(b)) > budget // 2 and len(b) >= len(a):
            diverged += 1
            hf_kept = int(hf["attention_mask"][row].sum())
            assert hf["token_type_ids"][row][:hf_kept].tolist() == (
                [0] * (budget // 2 + 2) + [1] * (budget // 2 + 2))
            assert segments[:hf_kept] == [0] * (budget // 2 + 3) + [1] * (budget // 2 + 1)
            continue
        compared += 1
        trimmed += len(a) + len(b) > budget
        assert kbert["token_ids"][row].tolist() == hf["input_ids"][row].tolist(), pairs[row]
        assert kbert["segment_ids"][row].tolist() == hf["token_type_ids"][row].tolist()
        assert kbert["padding_mask"][row].tolist() == hf["attention_mask"][row].tolist()
    assert compared > 200
    if sequence_length < 64:
        assert trimmed > 50, trimmed  # the comparison covers real trimming
    if budget % 2:
        assert diverged > 10  # ... and the known difference occurs in these data


def test_padding_longest_is_max_length_cut_to_the_longest_row(uncased_tokenizer, hf_tokenizer,
                                                              dev_rows):
    sentences = [sentence for sentence, _ in dev_rows]
    cases = [
        (sentences[:40], 128),  # single segment; the longest row is far below 128
        ((sentences[:40], sentences[40:80]), 128),  # pairs, untrimmed
        ((sentences[:40], sentences[40:80]), 24),  # pairs trimmed: the width is 24
        (sentences[:1], 128),
    ]
    for inputs, sequence_length in cases:
        fixed = BertTextPreprocessor(uncased_tokenizer, sequence_length)(inputs)
        longest = BertTextPreprocessor(uncased_tokenizer, sequence_length, padding="longest")(inputs)
        segments = inputs if isinstance(inputs, tuple) else (inputs,)
        pieces = [sum(len(p) for p in row) + len(segments) + 1
                  for row in zip(*(_hf_pieces(hf_tokenizer, list(s)) for s in segments))]
        width = min(max(pieces), sequence_length)
        assert width < 128
        for name in ("token_ids", "segment_ids", "padding_mask"):
            assert longest[name].dtype == tf.int32
            assert longest[name].shape == (len(segments[0]), width), name
            np.testing.assert_array_equal(longest[name], fixed[name][:, :width])
        assert (fixed["padding_mask"].numpy()[:, width:] == 0).all()
        np.testing.assert_array_equal(np.sum(longest["padding_mask"], 1),
                                      np.minimum(pieces, sequence_length))


def test_preprocessor_config_and_errors(uncased_tokenizer):
    layer = BertTextPreprocessor(uncased_tokenizer, 16, padding="longest")
    clone = BertTextPreprocessor.from_config(layer.get_config())
    assert (clone.sequence_length, clone.padding) == (16, "longest")
    assert clone(["a b c"])["token_ids"].numpy().tolist() == [[CLS, 1037, 1038, 1039, SEP]]
    with pytest.raises(ValueError, match=r"`padding` must be one of .*received 'left'"):
        BertPacker(16, CLS, SEP, padding="left")
    with pytest.raises(ValueError, match="received 3 segments"):
        layer((["a"], ["b"], ["c"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of strings"):
        layer((["a", "b"], ["c"]))


# ------------------------------------------------------------------------ batch plans


def _padding_waste(lengths, batches):
    padded = sum(lengths[b].max() * len(b) for b in batches)
    return 1.0 - lengths.sum() / padded


def test_plan_batches_every_example_once_and_reproducible():
    rng = np.random.default_rng(0)
    for n, batch_size, chunk_batches in [(1, 4, 50), (7, 3, 1), (100, 8, 3), (1000, 32, 5),
                                         (1001, 1, 50), (333, 500, 2)]:
        lengths = rng.integers(1, 60, n)
        plan = plan_batches(lengths, batch_size, seed=3, epoch=1, chunk_batches=chunk_batches)
        assert all(1 <= len(b) <= batch_size for b in plan)
        assert sorted(np.concatenate(plan).tolist()) == list(range(n))
        again = plan_batches(lengths, batch_size, seed=3, epoch=1, chunk_batches=chunk_batches)
        assert [b.tolist() for b in again] == [b.tolist() for b in plan]
        if n > 50:
            for other in (dict(seed=3, epoch=2), dict(seed=4, epoch=1)):
                changed = plan_batches(lengths, batch_size, chunk_batches=chunk_batches, **other)
                assert [b.tolist() for b in changed] != [b.tolist() for b in plan]
        # Within a batch, examples come from one length-sorted chunk: ascending lengths.
        assert all((np.diff(lengths[b]) >= 0).all() for b in plan)


def test_plan_batches_one_chunk_gives_disjoint_length_ranges():
    lengths = np.random.default_rng(1).integers(1, 100, 640)
    plan = plan_batches(lengths, 16, seed=0, chunk_batches=40)  # 640 = one chunk of 40 batches
    ranges = sorted((lengths[b].min(), lengths[b].max()) for b in plan)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))
    # ... yet the batch order is shuffled, not by length.
    firsts = [lengths[b].min() for b in plan]
    assert firsts != sorted(firsts)


def test_batches_per_epoch_equals_plan_length():
    for n in [1, 2, 5, 15, 16, 17, 63, 64, 65, 199, 200, 201, 1000]:
        for batch_size in [1, 3, 4, 16, 64]:
            for chunk_batches in [1, 2, 7, 50]:
                lengths = np.ones(n, int)
                for shuffle in (True, False):
                    plan = plan_batches(lengths, batch_size, shuffle=shuffle,
                                        chunk_batches=chunk_batches)
                    assert batches_per_epoch(n, batch_size, shuffle=shuffle,
                                             chunk_batches=chunk_batches) == len(plan), (
                        n, batch_size, chunk_batches, shuffle)
                    if not shuffle:
                        assert len(plan) == math.ceil(n / batch_size)


def test_plan_batches_without_shuffle_keeps_file_order():
    lengths = np.array([5, 1, 9, 2, 2, 7, 3])
    plan = plan_batches(lengths, 3, shuffle=False)
    assert [b.tolist() for b in plan] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="No examples"):
        plan_batches([], 3)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        plan_batches(lengths, 0)


def test_sst2_length_grouping_cuts_padding_waste(uncased_tokenizer, hf_tokenizer):
    examples = read_tsv(_sst2("train.tsv"), ["sentence"], "label")
    preprocessor = BertTextPreprocessor(uncased_tokenizer, 32, padding="longest")
    features, num_truncated = encode_texts(examples.texts, preprocessor)
    hf_lengths = np.array([len(ids) for ids in _hf_pieces(hf_tokenizer, examples.texts[0])])
    # Every example is packed once; the truncated ones are those over 30 pieces.
    assert num_truncated == int((hf_lengths > 30).sum()) > 0
    lengths = features["token_ids"].row_lengths().numpy()
    np.testing.assert_array_equal(lengths, np.minimum(hf_lengths, 30) + 2)
    sortish = plan_batches(lengths, 32, seed=0)
    order = np.random.default_rng(0).permutation(len(lengths))
    random = [order[i:i + 32] for i in range(0, len(order), 32)]
    sortish_waste, random_waste = _padding_waste(lengths, sortish), _padding_waste(lengths, random)
    assert random_waste > 0.3
    assert sortish_waste < 0.1 * random_waste, (sortish_waste, random_waste)


# ---------------------------------------------------------------------- padded batches


def test_padded_batches_dataset_pads_each_batch_to_its_longest():
    token_rows = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]
    features = {
        "token_ids": tf.ragged.constant(token_rows, tf.int32),
        "segment_ids": tf.ragged.constant([[0] * len(r) for r in token_rows[:3]]
                                          + [[0, 0, 1, 1], [1]], tf.int32),
        "example_index": tf.constant([0, 1, 2, 3, 4]),
    }
    labels = tf.ragged.constant([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]], tf.int32)
    batches = [np.array([3, 1]), np.array([0, 2, 4]), np.array([1])]
    dataset = padded_batches_dataset(features, batches, pad_values={"token_ids": 99, "labels": -100},
                                     labels=labels)
    got = list(dataset)
    assert len(got) == 3
    for (x, y), batch in zip(got, batches):
        width = max(len(token_rows[i]) for i in batch)
        expected_ids = np.full((len(batch), width), 99)
        expected_mask = np.zeros((len(batch), width), int)
        expected_labels = np.full((len(batch), width), -100)
        for row, i in enumerate(batch):
            n = len(token_rows[i])
            expected_ids[row, :n] = token_rows[i]
            expected_mask[row, :n] = 1
            expected_labels[row, :n] = labels[i].numpy()
        np.testing.assert_array_equal(x["token_ids"], expected_ids)
        np.testing.assert_array_equal(x["padding_mask"], expected_mask)
        np.testing.assert_array_equal(x["example_index"], batch)
        np.testing.assert_array_equal(y, expected_labels)
        assert set(x) == {"token_ids", "segment_ids", "padding_mask", "example_index"}
        assert x["token_ids"].dtype == x["padding_mask"].dtype == tf.int32
        # segment ids are padded with 0, not with the token pad value
        assert (x["segment_ids"].numpy()[expected_mask == 0] == 0).all()
    np.testing.assert_array_equal(got[0][0]["segment_ids"], [[0, 0, 1, 1], [0, 0, 0, 0]])
    # Unlabelled, and a dict of labels.
    x = next(iter(padded_batches_dataset(features, batches[:1])))
    assert isinstance(x, dict) and x["token_ids"].numpy().tolist() == [[11, 12, 13, 14], [8, 0, 0, 0]]
    _, y = next(iter(padded_batches_dataset(features, batches[:1], pad_values={"tags": -1},
                                            labels={"tags": labels, "index": tf.range(5)})))
    assert y["tags"].numpy().tolist() == [[7, 8, 9, 10], [4, -1, -1, -1]]
    assert y["index"].numpy().tolist() == [3, 1]


def test_sst2_dev_text_dataset_matches_huggingface_rows(uncased_tokenizer, hf_tokenizer, dev_rows):
    examples = read_tsv(_sst2("dev.tsv"), ["sentence"], "label")
    preprocessor = BertTextPreprocessor(uncased_tokenizer, 128, padding="longest")
    features, num_truncated = encode_texts(examples.texts, preprocessor, chunk_size=100)
    assert num_truncated == 0
    hf_rows = hf_tokenizer([s for s, _ in dev_rows])["input_ids"]
    labels = [int(label) for _, label in dev_rows]
    # Evaluation order: the file's, batches of 32 padded to their longest row.
    rows, seen = 0, []
    for x, y in text_dataset(features, examples.labels, 32, shuffle=False):
        width = x["token_ids"].shape[1]
        expected = hf_rows[rows:rows + len(y)]
        assert width == max(len(r) for r in expected)
        for got_ids, got_mask, want in zip(x["token_ids"].numpy(), x["padding_mask"].numpy(), expected):
            assert got_ids.tolist() == want + [PAD] * (width - len(want))
            assert got_mask.tolist() == [1] * len(want) + [0] * (width - len(want))
        assert (x["segment_ids"].numpy() == 0).all()
        seen += y.numpy().tolist()
        rows += len(y)
    assert rows == 436 and seen == labels
    # Shuffled training order: the same (row, label) multiset, in another order.
    shuffled = [(tuple(ids[mask == 1].tolist()), label)
                for x, y in text_dataset(features, examples.labels, 32, seed=5, epoch=0)
                for ids, mask, label in zip(x["token_ids"].numpy(), x["padding_mask"].numpy(),
                                            y.numpy().tolist())]
    expected = [(tuple(r), label) for r, label in zip(hf_rows, labels)]
    assert collections.Counter(shuffled) == collections.Counter(expected)
    assert shuffled != expected
    num_batches = sum(1 for _ in text_dataset(features, examples.labels, 32, seed=5, epoch=0))
    assert num_batches == batches_per_epoch(436, 32) == 14


# --------------------------------------------------------------------------- metrics


def _random_classes(seed, n, num_classes, agree=0.6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    predictions = np.where(rng.random(n) < agree, labels, rng.integers(0, num_classes, n))
    return labels, predictions


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_scikit_learn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels, predictions = _random_classes(seed, 200 + 37 * seed, 2)
    assert accuracy(labels, predictions) == pytest.approx(
        sklearn_metrics.accuracy_score(labels, predictions), abs=1e-12)
    assert f1(labels, predictions) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions), abs=1e-12)
    assert f1(labels, predictions, positive_label=0) == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions, pos_label=0), abs=1e-12)
    assert matthews_correlation(labels, predictions) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    for num_classes in (3, 5):
        labels, predictions = _random_classes(seed, 300, num_classes, agree=0.4)
        assert matthews_correlation(labels, predictions) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    # String class names and a class that is predicted but never true.
    labels = np.array(["a", "b", "b", "c", "a", "b"])
    predictions = np.array(["a", "b", "d", "c", "b", "b"])
    assert matthews_correlation(labels, predictions) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)


def test_classification_metrics_hand_computed_and_degenerate():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels = [1, 1, 0, 0, 1, 0]
    predictions = [1, 0, 0, 1, 1, 0]
    # tp = 2, fp = 1, fn = 1, tn = 2: F1 = 4 / 6, MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    assert accuracy(labels, predictions) == pytest.approx(4 / 6)
    assert f1(labels, predictions) == pytest.approx(2 / 3)
    assert matthews_correlation(labels, predictions) == pytest.approx(1 / 3)
    for constant in ([1] * 6, [0] * 6):
        assert matthews_correlation(labels, constant) == 0.0
        assert matthews_correlation(constant, labels) == 0.0
        assert sklearn_metrics.matthews_corrcoef(labels, constant) == 0.0
    assert matthews_correlation([2, 2, 2], [2, 2, 2]) == 0.0  # one class: undefined -> 0
    assert matthews_correlation(labels, labels) == pytest.approx(1.0)
    assert matthews_correlation(labels, [1 - p for p in labels]) == pytest.approx(-1.0)
    # No positive at all: sklearn's zero_division=0 value.
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0 == sklearn_metrics.f1_score([0, 0, 0], [0, 0, 0],
                                                                       zero_division=0)
    with pytest.raises(ValueError, match=r"differ in shape: \(3,\) vs \(2,\)"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        f1([], [])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, 150)
    predictions = labels + rng.normal(0, 1.5, 150)
    assert pearson_correlation(labels, predictions) == pytest.approx(
        stats.pearsonr(labels, predictions)[0], abs=1e-12)
    assert spearman_correlation(labels, predictions) == pytest.approx(
        stats.spearmanr(labels, predictions)[0], abs=1e-12)
    # STS-B-like scores with many ties (rounded to 0.2) on both sides.
    tied_labels = np.round(labels * 5) / 5
    tied_predictions = np.round(predictions).astype(np.float32)
    assert len(np.unique(tied_predictions)) < 20
    assert spearman_correlation(tied_labels, tied_predictions) == pytest.approx(
        stats.spearmanr(tied_labels, tied_predictions)[0], abs=1e-7)
    assert pearson_correlation(tied_labels, tied_predictions) == pytest.approx(
        stats.pearsonr(tied_labels, tied_predictions)[0], abs=1e-7)


def test_correlations_hand_computed_and_degenerate():
    # Ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; of [10, 30, 20, 40] [1, 3, 2, 4].
    x, y = np.array([1.0, 2.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0, 40.0])
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 3, 2, 4])
    dx, dy = rx - rx.mean(), ry - ry.mean()
    assert spearman_correlation(x, y) == pytest.approx((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))
    assert pearson_correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson_correlation([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman_correlation([5, 5, 5], [1, 2, 3]))
