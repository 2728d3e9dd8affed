"""Pretraining data: masking statistics on real text, NSP pairs, reproducibility."""

import numpy as np
import pytest

from kbert.data import (
    PretrainingDataConfig,
    build_pretraining_dataset,
    create_sentence_pairs,
    read_documents,
    write_default_corpus,
)

SPECIAL = {0, 101, 102}  # [PAD], [CLS], [SEP]


@pytest.fixture(scope="module")
def batches(wikitext_valid, uncased_tokenizer):
    config = PretrainingDataConfig(sequence_length=128, max_predictions_per_seq=20, seed=7)
    dataset = build_pretraining_dataset(wikitext_valid, uncased_tokenizer, config, batch_size=64)
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(12)], config


def test_masking_statistics(batches, uncased_tokenizer):
    batches, _ = batches
    selected = selectable = masked = random = kept = 0
    for b in batches:
        # Recover the original ids: put masked_lm_ids back at their positions.
        original = b["token_ids"].copy()
        w = b["masked_lm_weights"] > 0
        rows = np.nonzero(w)[0]
        positions = b["masked_lm_positions"][w]
        original[rows, positions] = b["masked_lm_ids"][w]
        real = b["padding_mask"] > 0
        selectable += int((real & ~np.isin(original, list(SPECIAL))).sum())
        selected += int(w.sum())
        # No special token (or padding) is ever selected.
        assert not np.isin(b["masked_lm_ids"][w], list(SPECIAL)).any()
        assert real[rows, positions].all()
        new = b["token_ids"][rows, positions]
        masked += int((new == 103).sum())
        kept += int(((new == b["masked_lm_ids"][w]) & (new != 103)).sum())
        random += int(((new != 103) & (new != b["masked_lm_ids"][w])).sum())
        # Unselected tokens are untouched.
        untouched = np.ones_like(w.any(-1, keepdims=True).repeat(original.shape[1], 1))
        untouched[rows, positions] = False
        np.testing.assert_array_equal(b["token_ids"][untouched], original[untouched])
    assert selected >= 10_000
    assert abs(selected / selectable - 0.15) < 0.01, selected / selectable
    assert abs(masked / selected - 0.8) < 0.01
    # A random id equal to the original counts as "kept": expected kept 0.1 + 0.1 / vocab.
    assert abs(random / selected - 0.1) < 0.01
    assert abs(kept / selected - 0.1) < 0.01


def test_shapes_and_nsp_balance(batches):
    batches, config = batches
    b = batches[0]
    assert b["token_ids"].shape == (64, 128) and b["token_ids"].dtype == np.int32
    assert b["masked_lm_positions"].shape == (64, 20) and b["masked_lm_weights"].dtype == np.float32
    assert (b["token_ids"][:, 0] == 101).all()
    labels = np.concatenate([b["next_sentence_labels"] for b in batches])
    assert abs(labels.mean() - 0.5) < 0.06, labels.mean()


def test_same_seed_same_batches(wikitext_valid, uncased_tokenizer, tmp_path):
    corpus = tmp_path / "corpus.txt"  # the first 400 lines: enough for 3 batches of 16
    with open(wikitext_valid, encoding="utf-8") as f:
        corpus.write_text("".join(f.readlines()[:400]), encoding="utf-8")
    wikitext_valid = str(corpus)
    config = PretrainingDataConfig(sequence_length=64, max_predictions_per_seq=10, seed=3)
    first = [build_pretraining_dataset(wikitext_valid, uncased_tokenizer, config, 16).skip(2)
             for _ in range(2)]
    a, b = (next(iter(d)) for d in first)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    other = PretrainingDataConfig(sequence_length=64, max_predictions_per_seq=10, seed=4)
    c = next(iter(build_pretraining_dataset(wikitext_valid, uncased_tokenizer, other, 16).skip(2)))
    assert not np.array_equal(a["token_ids"], c["token_ids"])
    # skip_batches resumes the stream where it was.
    resumed = next(iter(build_pretraining_dataset(wikitext_valid, uncased_tokenizer, config, 16, skip_batches=2)))
    np.testing.assert_array_equal(resumed["masked_lm_positions"], a["masked_lm_positions"])


def test_sentence_pairs_follow_documents():
    rng = np.random.default_rng(0)
    docs = [[[i * 100 + j] * 5 for j in range(6)] for i in range(4)]
    config = PretrainingDataConfig(sequence_length=16, max_predictions_per_seq=2, short_seq_prob=0.0, dupe_factor=20)
    a, b, labels = create_sentence_pairs(docs, config, rng)
    for ta, tb, label in zip(a, b, labels):
        same_doc = ta[0] // 100 == tb[0] // 100
        if label == 0:
            assert same_doc and tb[0] == ta[-1] + 1  # B continues A
        else:
            assert not same_doc
    assert abs(np.mean(labels) - 0.5) < 0.1


def test_corpus_errors_and_default_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_documents(str(tmp_path / "nothing-here*.txt"))
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="hold no text"):
        read_documents(str(tmp_path / "blank.txt"))
    with pytest.raises(ValueError, match="at least 2 documents"):
        create_sentence_pairs([[[1, 2]]], PretrainingDataConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        PretrainingDataConfig(sequence_length=16, max_predictions_per_seq=20)
    docs = read_documents(write_default_corpus(str(tmp_path / "default.txt")))
    assert len(docs) > 50
    assert sum(len(s) for d in docs for s in d) > 250_000
