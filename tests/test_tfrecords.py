"""BERT pretraining TFRecords: kbert's writer and reader against tf-models-official's.

References: tf-models-official's `create_pretraining_data` (the writer google-research/bert
ships, ported) and its `BertPretrainDataLoader`; the records are also decoded here with
plain Python (TFRecord framing + protobuf), independently of TensorFlow's parsing ops.
Input: WikiText-2 valid, rewritten one sentence per line with a blank line between
articles (the format both writers document), cut to keep the default suite short.
"""

import json
import os
import random
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kbert.data import (
    MaskedLMMasker,
    PretrainingDataConfig,
    merge_short_documents,
    pretraining_tfrecord_dataset,
    read_documents,
    split_features_for_fit,
    stream_documents,
    tfrecord_writer,
    tfrecords,
    write_pretraining_tfrecords,
)
from tests.conftest import REPO

SEQ, PRED = 128, 20
NAMES = ("token_ids", "segment_ids", "padding_mask", "masked_lm_positions", "masked_lm_ids",
         "masked_lm_weights", "next_sentence_labels")
CLS, SEP, MASK = 101, 102, 103


def one_sentence_per_line(source, target, max_lines):
    """WikiText -> one sentence per line, a blank line between articles (not between paragraphs)."""
    lines = []
    with open(source, encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if re.fullmatch(r"= [^=].* =", text):  # an article title
                if lines and lines[-1]:
                    lines.append("")
            elif text and not text.startswith("="):
                lines.extend(s for s in re.split(r"(?<=[.!?])\s+", text) if s)
            if len(lines) >= max_lines:
                break
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(target)


def read_records(paths):
    """Every record of TFRecord files as kbert-named NumPy rows, decoded without TensorFlow ops:
    the TFRecord framing (length, CRC, data, CRC) by hand, the tf.train.Example by protobuf."""
    rows = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            example = tf.train.Example.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            feature = example.features.feature
            names = tfrecords.V2_RECORD_NAMES if "input_word_ids" in feature else tfrecords.RECORD_NAMES
            rows.append({
                name: np.array(feature[names[name]].float_list.value, np.float32)
                if name == "masked_lm_weights"
                else np.array(feature[names[name]].int64_list.value, np.int64)
                for name in NAMES
            })
    return rows


def dataset_rows(dataset):
    """A kbert feature dataset (or tf-models loader output, renamed) as a list of NumPy rows."""
    rows = []
    for batch in dataset:
        batch = {k: v.numpy() for k, v in batch.items()}
        for i in range(len(batch["masked_lm_ids"])):
            rows.append({name: np.reshape(batch[name][i], [-1]) for name in NAMES})
    return rows


def tf_models_rows(pattern, v2_names=False):
    """tf-models-official's own reader, its outputs renamed to kbert's names."""
    from official.nlp.data import pretrain_dataloader

    config = pretrain_dataloader.BertPretrainDataConfig(
        input_path=pattern, global_batch_size=16, is_training=False, seq_length=SEQ,
        max_predictions_per_seq=PRED, drop_remainder=False, use_v2_feature_names=v2_names)
    renamed = pretrain_dataloader.BertPretrainDataLoader(config).load().map(lambda x: {
        "token_ids": x["input_word_ids"], "segment_ids": x["input_type_ids"],
        "padding_mask": x["input_mask"], **{k: x[k] for k in NAMES[3:]}})
    return dataset_rows(renamed)


def assert_same_rows(actual, expected, ordered=True):
    assert len(actual) == len(expected) > 0
    if not ordered:
        key = lambda row: tuple(np.concatenate([row[n].astype(np.float64) for n in NAMES]))
        actual, expected = sorted(actual, key=key), sorted(expected, key=key)
    for a, e in zip(actual, expected):
        for name in NAMES:
            np.testing.assert_array_equal(a[name], e[name], err_msg=name)
            assert a[name].dtype.kind == e[name].dtype.kind, name


def write_reference(input_path, output_path, vocab, whole_word_mask=False, dupe_factor=2,
                    v2_names=False):
    """tf-models-official's create_pretraining_data (its own functions, its own tokenizer)."""
    from official.nlp.data import create_pretraining_data as reference
    from official.nlp.tools import tokenization

    tokenizer = tokenization.FullTokenizer(vocab, do_lower_case=True)
    instances = reference.create_training_instances(
        [input_path], tokenizer, reference.get_processor_text_fn(False, True), SEQ, dupe_factor,
        0.1, 0.15, PRED, random.Random(12345), do_whole_word_mask=whole_word_mask)
    reference.write_instance_to_example_files(
        instances, tokenizer, SEQ, PRED, [output_path], False, v2_names)
    return output_path


def masking_statistics(rows, vocabulary):
    """Shares over all rows: predicted/selectable tokens, [MASK]/random/kept among predicted,
    random-next pairs, and words (a piece + its ## pieces) predicted only in part."""
    selectable = predicted = masked = kept = partial_words = words = 0
    for row in rows:
        weights = row["masked_lm_weights"] > 0
        positions = row["masked_lm_positions"][weights]
        original = row["token_ids"].copy()
        original[positions] = row["masked_lm_ids"][weights]
        real = row["padding_mask"] > 0
        assert (np.diff(positions) > 0).all() and real[positions].all()
        assert not np.isin(original[positions], [0, CLS, SEP]).any()
        untouched = np.ones_like(real)
        untouched[positions] = False
        np.testing.assert_array_equal(row["token_ids"][untouched], original[untouched])
        selectable += int((real & ~np.isin(original, [0, CLS, SEP])).sum())
        predicted += len(positions)
        new = row["token_ids"][positions]
        masked += int((new == MASK).sum())
        kept += int((new == original[positions]).sum())
        # Words: a piece and the ## pieces after it ([CLS]/[SEP] end a word).
        word, count = np.full(len(original), -1), -1
        for i in range(int(real.sum())):
            if original[i] in (CLS, SEP):
                continue
            if not (vocabulary[original[i]].startswith("##") and i > 0 and word[i - 1] >= 0):
                count += 1
            word[i] = count
        hit = np.zeros(len(original), bool)
        hit[positions] = True
        for k in np.unique(word[hit]):
            words += 1
            partial_words += not hit[word == k].all()
    labels = np.array([row["next_sentence_labels"][0] for row in rows])
    return {
        "predicted": predicted / selectable, "mask": masked / predicted,
        "kept": kept / predicted, "random": (predicted - masked - kept) / predicted,
        "random_next": labels.mean(), "partial_words": partial_words / words,
        "predictions": predicted,
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("tfrecords")


@pytest.fixture(scope="module")
def sentences(folder, wikitext_valid):
    return one_sentence_per_line(wikitext_valid, folder / "sentences.txt", 900)


@pytest.fixture(scope="module")
def vocabulary(uncased_vocab):
    with open(uncased_vocab, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def kbert_shards(folder, sentences, uncased_tokenizer):
    """kbert's writer, whole-word masking, 3 shards."""
    config = PretrainingDataConfig(sequence_length=SEQ, max_predictions_per_seq=PRED,
                                   dupe_factor=2, seed=5)
    paths = tfrecord_writer.shard_paths(str(folder / "kbert.tfrecord"), 3)
    summary = write_pretraining_tfrecords(sentences, paths, uncased_tokenizer, config,
                                          whole_word_mask=True, buffer_documents=4)
    return paths, summary


def test_reference_records_read_back_identically(folder, sentences, uncased_vocab):
    path = write_reference(sentences, str(folder / "reference.tfrecord"), uncased_vocab)
    expected = read_records([path])
    dataset = pretraining_tfrecord_dataset(path, 16, SEQ, PRED, repeat=False, shuffle=False)
    assert dataset.element_spec["token_ids"].dtype == tf.int32
    assert dataset.element_spec["next_sentence_labels"].shape.as_list() == [None]
    assert_same_rows(dataset_rows(dataset), expected)
    assert_same_rows(tf_models_rows(path), expected)
    # tf-models' records with its "v2" names (input_word_ids, input_type_ids) too.
    v2 = write_reference(sentences, str(folder / "reference_v2.tfrecord"), uncased_vocab,
                         dupe_factor=1, v2_names=True)
    rows = dataset_rows(pretraining_tfrecord_dataset(v2, 16, SEQ, PRED, repeat=False, shuffle=False))
    assert_same_rows(rows, read_records([v2]))


def test_kbert_records_read_by_tf_models_loader(kbert_shards):
    paths, summary = kbert_shards
    expected = read_records(paths)
    assert len(expected) == summary.examples
    sizes = [len(read_records([p])) for p in paths]
    assert max(sizes) - min(sizes) <= 1  # round-robin over the shards
    assert_same_rows(tf_models_rows(paths[0][:-len("00000-of-00003")] + "*"), expected,
                     ordered=False)
    kbert = pretraining_tfrecord_dataset(paths, 16, SEQ, PRED, repeat=False, shuffle=False)
    assert_same_rows(dataset_rows(kbert), expected, ordered=False)


def test_writer_statistics_match_the_reference(folder, sentences, uncased_vocab,
                                               uncased_tokenizer, vocabulary, kbert_shards):
    config = PretrainingDataConfig(sequence_length=SEQ, max_predictions_per_seq=PRED,
                                   dupe_factor=2, seed=5)
    path = str(folder / "kbert_tokens.tfrecord")
    write_pretraining_tfrecords(sentences, [path], uncased_tokenizer, config)
    ours = {"token": masking_statistics(read_records([path]), vocabulary),
            "word": masking_statistics(read_records(kbert_shards[0]), vocabulary)}
    theirs = {
        "token": masking_statistics(read_records([str(folder / "reference.tfrecord")]), vocabulary),
        "word": masking_statistics(read_records([write_reference(
            sentences, str(folder / "reference_wwm.tfrecord"), uncased_vocab,
            whole_word_mask=True)]), vocabulary),
    }
    for kind in ("token", "word"):
        a, b = ours[kind], theirs[kind]
        assert a["predictions"] > 8000 and b["predictions"] > 8000
        assert abs(a["predicted"] - b["predicted"]) < 0.01, (kind, a, b)
        assert abs(a["predicted"] - 0.15) < 0.01, (kind, a)
        for share, expected in (("mask", 0.8), ("random", 0.1), ("kept", 0.1)):
            assert abs(a[share] - expected) < 0.02 and abs(b[share] - expected) < 0.02, \
                (kind, share, a, b)
        assert abs(a["random_next"] - 0.5) < 0.06, (kind, a)
    # Whole-word masking predicts every piece of a word; piece masking often does not.
    assert ours["word"]["partial_words"] == theirs["word"]["partial_words"] == 0.0
    assert ours["token"]["partial_words"] > 0.02 and theirs["token"]["partial_words"] > 0.02


def test_lengths_and_files_checked_when_the_pipeline_is_built(folder, kbert_shards):
    paths = kbert_shards[0]
    with pytest.raises(ValueError, match=r"feature input_ids has length 128 in the first record, "
                                         r"but sequence_length is 64"):
        pretraining_tfrecord_dataset(paths, 8, 64, PRED)
    with pytest.raises(ValueError, match=r"feature masked_lm_positions has length 20 in the first "
                                         r"record, but max_predictions_per_seq is 10"):
        pretraining_tfrecord_dataset(paths, 8, SEQ, 10)
    with pytest.raises(ValueError, match=r"holds token id \d+, but the vocabulary has 1000"):
        pretraining_tfrecord_dataset(paths, 8, SEQ, PRED, vocab_size=1000)
    with pytest.raises(FileNotFoundError, match="No TFRecord file matches '.*nothing-\\*'"):
        pretraining_tfrecord_dataset(str(folder / "nothing-*"), 8, SEQ, PRED)
    text = folder / "notes.txt"
    text.write_text("not a record\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes.txt is not a TFRecord file \(corrupted record"):
        pretraining_tfrecord_dataset([paths[0], str(text)], 8, SEQ, PRED)
    other = str(folder / "other.tfrecord")
    with tf.io.TFRecordWriter(other) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString())
    with pytest.raises(ValueError, match=r"lacks \['input_ids', 'input_mask'"):
        pretraining_tfrecord_dataset(other, 8, SEQ, PRED)


def test_stream_resumes_in_place_and_remasks(kbert_shards, uncased_tokenizer, vocabulary):
    paths = kbert_shards[0]

    def batches(skip=0, masker=None, count=4):
        dataset = pretraining_tfrecord_dataset(paths, 8, SEQ, PRED, shuffle_buffer_size=64,
                                               seed=3, skip_batches=skip, masker=masker)
        assert dataset.element_spec["token_ids"].shape.as_list() == [8, SEQ]  # static shapes
        return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]

    first, again, resumed = batches(count=6), batches(count=6), batches(skip=3, count=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    for a, b in zip(first[3:], resumed):  # skip_batches=3 continues at the 4th batch
        for name in NAMES:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(first[0]["token_ids"], first[1]["token_ids"])

    config = PretrainingDataConfig(sequence_length=SEQ, max_predictions_per_seq=PRED, seed=9)
    masker = MaskedLMMasker.from_tokenizer(config, uncased_tokenizer, whole_word_mask=True)
    remasked = batches(masker=masker)
    token_masker = MaskedLMMasker.from_tokenizer(config, uncased_tokenizer)
    for a, b in zip(batches(masker=token_masker)[2:], batches(skip=2, masker=token_masker, count=2)):
        for name in NAMES:  # re-masked streams resume exactly too
            np.testing.assert_array_equal(a[name], b[name])
    # With an input pipeline of 2 (distribute_datasets_from_function), a step takes 8 / 2
    # records from each pipeline's own files.
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    piped = [[b["token_ids"] for b in pretraining_tfrecord_dataset(
        paths, 8, SEQ, PRED, seed=3, skip_batches=skip, input_context=context).take(4 - skip)]
        for skip in (0, 3)]
    assert piped[0][0].shape == (4, SEQ)
    np.testing.assert_array_equal(piped[0][3], piped[1][0])
    rows = []
    for static, dynamic in zip(first, remasked):
        np.testing.assert_array_equal(tfrecords.unmask(dynamic), tfrecords.unmask(static))
        assert not np.array_equal(dynamic["masked_lm_positions"], static["masked_lm_positions"])
        rows += [{n: np.reshape(dynamic[n][i], [-1]) for n in NAMES} for i in range(8)]
    stats = masking_statistics(rows, vocabulary)
    assert stats["partial_words"] == 0.0 and abs(stats["predicted"] - 0.15) < 0.03
    x, y, weights = split_features_for_fit(remasked[0])
    assert sorted(x) == ["masked_lm_positions", "padding_mask", "segment_ids", "token_ids"]
    assert sorted(y) == sorted(weights) == ["masked_lm_logits", "next_sentence_logits"]


def test_shards_by_file_for_several_workers(kbert_shards):
    from tensorflow.python.data.experimental.ops import distribute as data_distribute

    paths = kbert_shards[0]
    per_file = [{r["token_ids"].tobytes() for r in read_records([p])} for p in paths]
    dataset = pretraining_tfrecord_dataset(paths, 4, SEQ, PRED, repeat=False, shuffle=False,
                                           num_workers=2)
    assert dataset.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.FILE
    seen = []
    for worker in range(2):  # what tf.distribute applies on each of 2 workers
        sharded = data_distribute._AutoShardDataset(dataset, 2, worker)
        seen.append({r["token_ids"].astype(np.int64).tobytes() for r in dataset_rows(sharded)})
    assert seen == [per_file[0] | per_file[2], per_file[1]]  # whole files, disjoint
    # Re-masking keeps FILE sharding possible (no position counter in the pipeline).
    config = PretrainingDataConfig(sequence_length=SEQ, max_predictions_per_seq=PRED)
    masker = MaskedLMMasker(config, 30522, MASK, CLS, SEP, continuation_ids=[])  # piece masking
    remasked = pretraining_tfrecord_dataset(paths, 4, SEQ, PRED, repeat=False, shuffle=False,
                                            num_workers=2, masker=masker)
    rows = dataset_rows(data_distribute._AutoShardDataset(remasked, 2, 1))
    assert {r["next_sentence_labels"].tobytes() for r in rows} and len(rows) == len(per_file[1])
    one_file = pretraining_tfrecord_dataset(paths[0], 4, SEQ, PRED, repeat=False)
    assert one_file.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.DATA
    more_workers = pretraining_tfrecord_dataset(paths, 4, SEQ, PRED, num_workers=4)
    assert more_workers.options().experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.DATA


def test_corpus_streams_as_read_documents(folder, wikitext_valid, uncased_tokenizer):
    documents = list(stream_documents(wikitext_valid, block_bytes=4096))
    assert documents == read_documents(wikitext_valid)
    assert list(tfrecord_writer._merged_documents(iter(documents))) == merge_short_documents(documents)
    buffers = list(tfrecord_writer._document_buffers(iter(range(11)), 4))
    assert buffers == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert list(tfrecord_writer._document_buffers(iter(range(9)), 4))[-1] == [4, 5, 6, 7, 8]
    latin1 = folder / "latin1.txt"
    latin1.write_bytes(b"One.\n\nTwo.\n" + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1.txt:4: not UTF-8 \(byte 0xe9 at column 4\)"):
        list(stream_documents(str(latin1)))
    # The writer raises it as such (not as a tf.data error) and leaves no file behind.
    config = PretrainingDataConfig(sequence_length=32, max_predictions_per_seq=4)
    with pytest.raises(ValueError, match=r"latin1.txt:4: not UTF-8"):
        write_pretraining_tfrecords(str(latin1), [str(folder / "bad.tfrecord")],
                                    uncased_tokenizer, config)
    assert not list(folder.glob("bad.tfrecord*"))


def open_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _run(module, *flags):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: the program keeps TF quiet
    result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600, check=False)
    return result.returncode, result.stdout


def test_programs_write_records_and_pretrain_from_them(folder, sentences, uncased_vocab):
    small = folder / "small.txt"
    lines = open_text(sentences).splitlines(keepends=True)
    small.write_text("".join(lines[:250]), encoding="utf-8")
    lengths = ["--max_seq_length=32", "--max_predictions_per_seq=4"]
    code, output = _run("trainers.create_pretraining_data", f"--input_file={small}",
                        f"--vocab_file={uncased_vocab}", f"--output_files={folder}/p.tfrecord",
                        "--num_shards=2", "--dupe_factor=1", "--do_whole_word_mask", *lengths)
    assert code == 0, output[-3000:]
    assert output.count("\n") == 1 and '"examples": ' in output, output  # one summary line
    shards = sorted(str(p) for p in folder.glob("p.tfrecord-*"))
    assert [os.path.basename(p) for p in shards] == [
        "p.tfrecord-00000-of-00002", "p.tfrecord-00001-of-00002"]
    assert tfrecords.check_pretraining_records(shards, 32, 4) == tfrecords.RECORD_NAMES

    train = [f"--input_files={folder}/p.tfrecord-*", f"--vocab_file={uncased_vocab}",
             "--global_batch_size=4", "--sequence_length=32", "--max_predictions_per_seq=4"]
    code, output = _run("trainers.pretrain", f"--model_dir={folder}/run", "--train_steps=2", *train)
    assert code == 0, output[-3000:]
    assert "Starting at step 0 of 2" in output and '"final_step": 2' in output
    settings = (folder / "run" / "pretrain_config.json").read_text()
    assert f'"{shards[0]}"' in settings and '"input_files_digest": "' in settings

    # Bad command lines: one `error:` line each, nothing created (one process per program,
    # tests/program_failures.py; test_pretrain_program checks the console of a real process).
    new = f"--model_dir={folder}/new"
    shard = shards[0]
    pretrain_cases = {
        "error: --input_files: {shard}: feature input_ids has length 32 in the first record, "
        "but sequence_length is 64.": [new, *train[:-2], "--sequence_length=64",
                                       "--max_predictions_per_seq=4"],
        "error: --input_files: {shard}: feature masked_lm_positions has length 4 in the first "
        "record, but max_predictions_per_seq is 5.": [new, *train[:-1], "--max_predictions_per_seq=5"],
        "error: --input_files and --corpus exclude each other": [new, *train, f"--corpus={small}"],
        "error: --input_files needs --vocab_file": [new, train[0], *train[2:]],
        "error: --input_files: {small} is not a TFRecord file (corrupted record at 0":
            [new, f"--input_files={small}", *train[1:]],
        "error: --input_files: No TFRecord file matches": [new, f"--input_files={folder}/absent-*",
                                                            *train[1:]],
    }
    assert_failures("trainers.pretrain", pretrain_cases, shard=shard, small=small)
    assert not (folder / "new").exists()


def assert_failures(program, cases, **names):
    """Runs `program` on each failing command line (values) in one process
    (tests/program_failures.py); each must stop with its one-line message (keys)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.program_failures", program, json.dumps(list(cases.values()))],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for message, (status, printed) in zip(cases, outcomes, strict=True):
        message = message.format(**names)
        assert str(status).startswith(message) and "\n" not in str(status), (message, status)
        assert not printed.strip(), printed[-2000:]


@pytest.mark.slow
def test_create_pretraining_data_refuses_bad_input(folder, sentences, uncased_vocab):
    existing = folder / "existing.tfrecord"
    existing.write_bytes(b"")
    write = [f"--input_file={sentences}", f"--vocab_file={uncased_vocab}"]
    latin1 = folder / "latin1-input.txt"
    latin1.write_bytes(b"One. Two.\n\ncaf\xe9 au lait.\n")
    assert_failures("trainers.create_pretraining_data", {
        "error: --output_files: {existing} exists; pass --overwrite to replace it.":
            [*write, f"--output_files={existing}"],
        "error: --input_file: No corpus file matches": [
            f"--input_file={folder}/absent-*.txt", *write[1:], f"--output_files={folder}/new.tfrecord"],
        "error: --input_file: {latin1}:3: not UTF-8 (byte 0xe9 at column 4)":
            [f"--input_file={latin1}", *write[1:], f"--output_files={folder}/new.tfrecord"],
        "error: --max_predictions_per_seq=20 must be in [1, max_seq_length - 3 = 13].":
            [*write, f"--output_files={folder}/new.tfrecord", "--max_seq_length=16"],
        "error: --num_shards=2 takes one --output_files name; received 2.":
            [*write, f"--output_files={folder}/a,{folder}/b", "--num_shards=2"],
    }, existing=existing, latin1=latin1)
    assert not list(folder.glob("new.tfrecord*")) and existing.read_bytes() == b""


@pytest.mark.slow
def test_resumed_run_on_records_equals_an_uninterrupted_one(folder, sentences, uncased_vocab,
                                                            uncased_tokenizer):
    """A run killed after its step-3 checkpoint and run again ends with the uninterrupted
    run's weights (the same schedule, data from the same place, dropout state restored)."""
    import shutil

    import keras

    config = PretrainingDataConfig(sequence_length=32, max_predictions_per_seq=4, seed=1)
    paths = tfrecord_writer.shard_paths(str(folder / "resume.tfrecord"), 2)
    write_pretraining_tfrecords(sentences, paths, uncased_tokenizer, config)
    train = [f"--input_files={folder}/resume.tfrecord-*", f"--vocab_file={uncased_vocab}",
             "--global_batch_size=4", "--sequence_length=32", "--max_predictions_per_seq=4",
             "--checkpoint_every=3", "--train_steps=6"]
    straight, resumed = folder / "straight", folder / "resumed"
    assert _run("trainers.pretrain", f"--model_dir={straight}", *train)[0] == 0
    # What a kill between the checkpoints at steps 3 and 6 leaves behind.
    shutil.copytree(straight, resumed)
    for path in [*resumed.glob("ckpt-6.*"), resumed / "pretrainer.keras",
                 resumed / "encoder.keras", resumed / "summary.json"]:
        path.unlink()
    (resumed / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    code, output = _run("trainers.pretrain", f"--model_dir={resumed}", *train)
    assert code == 0 and "Starting at step 3 of 6" in output, output[-2000:]
    a, b = (keras.saving.load_model(name / "pretrainer.keras") for name in (straight, resumed))
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)
