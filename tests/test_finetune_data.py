"""Fine-tuning data: GLUE TSV reading (SST-2), length-bucketed batch plans and padded batches.

References are independent of the code under test: the raw files read with plain Python,
`transformers.BertTokenizerFast` on the same vocabulary, and NumPy padding.
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
from kbert.text import BertTextPreprocessor
from tests.conftest import CLS, PAD, SEP, plain_rows, sst2_path  # noqa: F401

# --------------------------------------------------------------------------- read_tsv


@pytest.mark.parametrize("name,count", [("train.tsv", 67_349), ("dev.tsv", 436)])
def test_sst2_counts_and_label_balance(name, count):
    rows = plain_rows(sst2_path(name))
    assert len(rows) == count
    examples = read_tsv(sst2_path(name), ["sentence"], "label")
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
    examples = read_tsv(sst2_path("train.tsv"), ["sentence"], "label")
    preprocessor = BertTextPreprocessor(uncased_tokenizer, 32, padding="longest")
    features, num_truncated = encode_texts(examples.texts, preprocessor)
    hf_lengths = np.array([len(ids) for ids in hf_tokenizer(examples.texts[0], add_special_tokens=False)["input_ids"]])
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


def test_sst2_dev_text_dataset_matches_huggingface_rows(uncased_tokenizer, hf_tokenizer, sst2_dev_rows):
    examples = read_tsv(sst2_path("dev.tsv"), ["sentence"], "label")
    preprocessor = BertTextPreprocessor(uncased_tokenizer, 128, padding="longest")
    features, num_truncated = encode_texts(examples.texts, preprocessor, chunk_size=100)
    assert num_truncated == 0
    hf_rows = hf_tokenizer([s for s, _ in sst2_dev_rows])["input_ids"]
    labels = [int(label) for _, label in sst2_dev_rows]
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


