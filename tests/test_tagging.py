"""Tagging data (CoNLL-U/CoNLL, first-piece labels, in-graph word packer) and tagging metrics.

References are independent of the code under test: line counts of the raw
files, WordPiece ids looked up in Google's uncased vocabulary, seqeval 1.2.2
(conlleval-compatible default mode) and hand-computed values.
"""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kbert.data.tagging import (
    IGNORE_LABEL,
    TaggedSentence,
    build_label_list,
    encode_tagged_sentences,
    ids_to_tags,
    read_conll,
    read_conllu,
    tagging_dataset,
    word_predictions,
)
from kbert.metrics.tagging import (
    MaskedSparseCategoricalAccuracy,
    entity_f1,
    token_accuracy,
)
from kbert.text.bert_word_packer import BertWordPacker
from tests.conftest import SHARED_DATA

EWT = SHARED_DATA / "ud-english-ewt"
UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"]  # universaldependencies.org/u/pos/


def _ewt(name):
    path = EWT / name
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set KBERT_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def ewt_dev():
    return read_conllu(_ewt("en_ewt-ud-dev.conllu"))


# --- Readers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,sentences,words", [
    ("en_ewt-ud-dev.conllu", 2001, 25147),  # words: `grep -cP '^\d+\t'`
    ("en_ewt-ud-test-a.conllu", 1041, 13981),
])
def test_read_ewt_counts(name, sentences, words):
    path = _ewt(name)
    got = read_conllu(path)
    text = path.read_text(encoding="utf-8")
    assert len(got) == sentences == len(re.findall(r"^# sent_id", text, re.M))
    assert sum(len(s.words) for s in got) == words == len(re.findall(r"^[0-9]+\t", text, re.M))
    assert all(len(s.words) == len(s.tags) == len(s.lines) for s in got)
    assert build_label_list(got) == UPOS


def test_ewt_multiword_tokens_and_empty_nodes(ewt_dev):
    path = str(_ewt("en_ewt-ud-dev.conllu"))
    # Line 158 is "29-30 didn't": the words are lines 159-160 "did" AUX, "n't" PART.
    sentence = next(s for s in ewt_dev if 159 in s.lines)
    j = sentence.lines.index(159)
    assert sentence.words[j - 1:j + 3] == ["they", "did", "n't", "."]
    assert sentence.tags[j:j + 2] == ["AUX", "PART"]
    assert "didn't" not in sentence.words
    today = next(s for s in ewt_dev if 166 in s.lines)  # after "1-2 Today's" on line 165
    assert today.words[:3] == ["Today", "'s", "incident"] and today.tags[:3] == ["NOUN", "PART", "NOUN"]
    assert today.source == f"{path}:{today.lines[0] - 3}"  # "# sent_id" opens the sentence
    # Line 1602 is the empty node "8.1 write" between "8 like" and "9 about".
    empty = next(s for s in ewt_dev if 1601 in s.lines)
    k = empty.lines.index(1601)
    assert empty.words[k:k + 2] == ["like", "about"] and 1602 not in empty.lines


def test_read_conllu_hand_file(tmp_path):
    path = tmp_path / "a.conllu"
    rows = [
        "# sent_id = 1", "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_",
        "1\tdo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_", "2\tn't\tnot\tPART\tRB\t_\t1\tadvmod\t_\t_",
        "2.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t_\t_", "3\tgo\tgo\tVERB\tVB\t_\t1\txcomp\t_\t_", "",
        "", "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_",  # no trailing blank line
    ]
    path.write_text("\n".join(rows), encoding="utf-8")
    upos = read_conllu(path)
    assert [s.words for s in upos] == [["do", "n't", "go"], ["Hi"]]
    assert [s.tags for s in upos] == [["AUX", "PART", "VERB"], ["INTJ"]]
    assert [s.source for s in upos] == [f"{path}:1", f"{path}:9"]
    assert [s.tags for s in read_conllu(path, tag_field="xpos")] == [["VBP", "RB", "VB"], ["UH"]]


def test_read_conll2003(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n-DOCSTART- -X- -X- O\n"
        "Bonn NNP B-NP B-LOC\n"
    )
    got = read_conll(path)
    assert [s.words for s in got] == [["EU", "rejects"], ["Peter", "Blackburn"], ["Bonn"]]
    assert [s.tags for s in got] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert got[1].source == f"{path}:7" and got[1].lines == [7, 8]
    assert [s.tags for s in read_conll(path, tag_column=1)][0] == ["NNP", "VBZ"]
    assert build_label_list(got) == ["B-LOC", "B-ORG", "B-PER", "I-PER", "O"]


def test_bad_input(tmp_path, uncased_tokenizer):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tA\ta\tDET\tDT\t_\t0\troot\t_\t_\n2\tcat\tcat\tNOUN\tNN\t_\t1\n")
    with pytest.raises(ValueError, match=r"bad\.conllu:2: expected 10 .*found 7"):
        read_conllu(bad)
    bad.write_text("1\tA\ta\tDET\tDT\t_\t0\troot\t_\t_\n3\tcat\tcat\tNOUN\tNN\t_\t1\tdep\t_\t_\n")
    with pytest.raises(ValueError, match=r"bad\.conllu:2: word ID '3'"):
        read_conllu(bad)
    bad.write_text("1\tA\ta\t_\tDT\t_\t0\troot\t_\t_\n")
    with pytest.raises(ValueError, match=r"bad\.conllu:1: .*no upos"):
        read_conllu(bad)
    empty = tmp_path / "empty.conllu"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=r"empty\.conllu: no sentences"):
        read_conllu(empty)
    with pytest.raises(ValueError, match="tag_field"):
        read_conllu(empty, tag_field="lemma")
    conll = tmp_path / "bad.txt"
    conll.write_text("EU NNP B-ORG\nrejects O\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected 3 columns.*found 2"):
        read_conll(conll)
    # An eval file with a tag the training label list lacks: named with file and line.
    evalfile = tmp_path / "eval.conllu"
    evalfile.write_text("# c\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n2\t!\t!\tPUNCT\t.\t_\t1\tp\t_\t_\n")
    with pytest.raises(ValueError, match=r"eval\.conllu:3: unknown tag 'PUNCT'"):
        read_conllu(evalfile, label_list=["INTJ", "NOUN"])
    sentences = read_conllu(evalfile)
    with pytest.raises(ValueError, match=r"eval\.conllu:3: unknown tag 'PUNCT'"):
        encode_tagged_sentences(sentences, uncased_tokenizer, ["INTJ", "NOUN"], 16)
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        encode_tagged_sentences([TaggedSentence(["a", "b"], ["X"])], uncased_tokenizer, ["X"], 16)


# --- Encoding ------------------------------------------------------------------------------


def test_first_piece_labels(uncased_tokenizer):
    tok = uncased_tokenizer
    labels = ["ADJ", "DET", "NOUN", "X"]
    sentence = TaggedSentence(["The", "unaffable", "man", "\x07"], ["DET", "ADJ", "NOUN", "X"])
    ex = encode_tagged_sentences([sentence], tok, labels, 16)
    pieces = ["[CLS]", "the", "una", "##ffa", "##ble", "man", "[UNK]", "[SEP]"]
    assert ex.token_ids[0].tolist() == [tok.token_to_id(p) for p in pieces]
    ig = IGNORE_LABEL
    assert ex.labels[0].tolist() == [ig, 1, 0, ig, ig, 2, 3, ig]
    assert ex.word_ids[0].tolist() == [-1, 0, 1, 1, 1, 2, 3, -1]
    assert ex.segment_ids[0].tolist() == [0] * 8 and ex.padding_mask[0].tolist() == [1] * 8
    assert all(a.dtype == np.int32 for a in (ex.token_ids[0], ex.labels[0], ex.word_ids[0]))
    assert ex.num_truncated_words == 0 and ex.num_words.tolist() == [4]
    # Predictions are read on first pieces: perturb the other pieces, nothing changes.
    logits = np.eye(4)[[0, 1, 0, 3, 3, 2, 3, 0]]
    assert [p.tolist() for p in word_predictions([logits], ex.word_ids, ex.num_words)] == [[1, 0, 2, 3]]


def test_ignore_label_in_range_rejected(uncased_tokenizer):
    sentence = TaggedSentence(["a"], ["X"])
    with pytest.raises(ValueError, match=r"ignore_label=0 .*\[0, 3\)"):
        encode_tagged_sentences([sentence], uncased_tokenizer, ["X", "Y", "Z"], 8, ignore_label=0)
    ex = encode_tagged_sentences([sentence], uncased_tokenizer, ["X", "Y", "Z"], 8, ignore_label=3)
    assert ex.labels[0].tolist() == [3, 0, 3]


def test_truncation_reported_and_split(uncased_tokenizer):
    # Pieces per word: unaffable 3, man 1, embeddings 4 (em ##bed ##ding ##s), a 1.
    sentence = TaggedSentence(["unaffable", "man", "embeddings", "a"], ["A", "B", "A", "B"])
    cut = encode_tagged_sentences([sentence], uncased_tokenizer, ["A", "B"], 6)
    assert cut.word_ids[0].tolist() == [-1, 0, 0, 0, 1, -1]
    assert cut.num_words_kept.tolist() == [2] and cut.num_truncated_words == 2
    predicted = word_predictions(cut.labels, cut.word_ids, cut.num_words)
    assert predicted[0].tolist() == [0, 1, -1, -1]
    tags = ids_to_tags(predicted, ["A", "B"])
    assert tags == [["A", "B", None, None]]
    assert token_accuracy([sentence.tags], tags) == 0.5  # dropped words count as errors
    split = encode_tagged_sentences([sentence], uncased_tokenizer, ["A", "B"], 6, long_sentences="split")
    assert [w.tolist() for w in split.word_ids] == [[-1, 0, 0, 0, 1, -1], [-1, 2, 2, 2, 2, -1], [-1, 3, -1]]
    assert split.sentence_index.tolist() == [0, 0, 0] and split.num_truncated_words == 0
    joined = word_predictions(split.labels, split.word_ids, split.num_words, split.sentence_index)
    assert joined[0].tolist() == [0, 1, 0, 1]
    # A single word longer than the budget keeps its first pieces and its label.
    one = encode_tagged_sentences([sentence], uncased_tokenizer, ["A", "B"], 4, long_sentences="split")
    assert one.word_ids[2].tolist() == [-1, 2, 2, -1] and one.num_truncated_words == 0


def test_tagging_dataset_pads_to_longest(uncased_tokenizer):
    sentences = [TaggedSentence(["man"], ["A"]), TaggedSentence(["the", "unaffable"], ["A", "B"]),
                 TaggedSentence(["a"], ["B"])]
    ex = encode_tagged_sentences(sentences, uncased_tokenizer, ["A", "B"], 32)
    features, labels = next(iter(tagging_dataset(ex, 2)))
    assert features["token_ids"].numpy().tolist() == [[101, 2158, 102, 0, 0, 0], [101, 1996, 14477, 20961, 3468, 102]]
    assert features["padding_mask"].numpy().tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert labels.numpy().tolist() == [[-100, 0, -100, -100, -100, -100], [-100, 0, 1, -100, -100, -100]]
    assert labels.dtype == tf.int32 and features["segment_ids"].dtype == tf.int32

    def order(seed):
        return [t for f, _ in tagging_dataset(ex, 1, shuffle=True, seed=seed) for t in f["token_ids"][0, 1:2].numpy()]

    assert order(7) == order(7) and sorted(order(7)) == sorted([2158, 1996, 1037])


def test_masked_accuracy_in_model_evaluate(uncased_tokenizer):
    sentences = [TaggedSentence(["the", "unaffable", "man"], ["A", "B", "A"]),
                 TaggedSentence(["a"], ["B"])]
    ex = encode_tagged_sentences(sentences, uncased_tokenizer, ["A", "B"], 32)
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    logits = keras.layers.Dense(2)(keras.layers.Embedding(uncased_tokenizer.vocab_size, 4)(inputs))
    model = keras.Model({"token_ids": inputs}, logits)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100),
                  metrics=[MaskedSparseCategoricalAccuracy()])
    dataset = tagging_dataset(ex, 2).map(lambda f, y: ({"token_ids": f["token_ids"]}, y))
    accuracy = model.evaluate(dataset, verbose=0, return_dict=True)["masked_accuracy"]
    features, labels = next(iter(dataset))
    predicted = model.predict(features, verbose=0).argmax(-1)
    keep = labels.numpy() != -100
    assert keep.sum() == 4
    assert accuracy == pytest.approx(np.mean(predicted[keep] == labels.numpy()[keep]))


# --- BertWordPacker ------------------------------------------------------------------------


def test_word_packer_matches_encoder_on_ewt(ewt_dev, uncased_tokenizer):
    sentences = ewt_dev[:200]
    ex = encode_tagged_sentences(sentences, uncased_tokenizer, UPOS, 32)
    assert ex.num_truncated_words > 0  # the comparison covers truncation too
    packer = BertWordPacker(uncased_tokenizer, 32)
    words = tf.ragged.constant([s.words for s in sentences], dtype=tf.string)
    eager = {k: v.numpy() for k, v in packer(words).items()}
    for name in ("token_ids", "segment_ids", "padding_mask", "word_ids"):
        pad = {"token_ids": 0, "word_ids": -1}.get(name, 0)
        expected = np.stack([np.pad(a, (0, 32 - len(a)), constant_values=pad) for a in getattr(ex, name)])
        np.testing.assert_array_equal(eager[name], expected, err_msg=name)
        assert eager[name].dtype == np.int32
    mapped = tf.data.Dataset.from_tensor_slices(words).ragged_batch(64).map(packer)
    got = np.concatenate([b["word_ids"].numpy() for b in mapped])
    np.testing.assert_array_equal(got, eager["word_ids"])


def test_word_packer_config_savedmodel_and_errors(tmp_path, uncased_tokenizer):
    packer = BertWordPacker(uncased_tokenizer, 8)
    words = [["The", "unaffable", "\x07"], [], ["man"]]
    expected = {k: v.numpy() for k, v in packer(words).items()}
    assert expected["token_ids"].tolist()[0] == [101, 1996, 14477, 20961, 3468, 100, 102, 0]
    assert expected["word_ids"].tolist() == [[-1, 0, 1, 1, 1, 2, -1, -1], [-1] * 8, [-1, 0, -1] + [-1] * 5]
    clone = BertWordPacker.from_config(packer.get_config())
    assert clone.sequence_length == 8
    np.testing.assert_array_equal(clone(words)["token_ids"], expected["token_ids"])

    module = tf.Module()
    module.packer = packer
    spec = (tf.TensorSpec([None, None], tf.string), tf.TensorSpec([None], tf.int64))
    module.pack = tf.function(lambda w, n: packer(tf.RaggedTensor.from_tensor(w, lengths=n)),
                              input_signature=spec)
    tf.saved_model.save(module, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    dense = tf.constant([["The", "unaffable", "\x07"], ["", "", ""], ["man", "", ""]])
    out = loaded.pack(dense, tf.constant([3, 0, 1], tf.int64))
    for name, value in expected.items():
        np.testing.assert_array_equal(out[name].numpy(), value, err_msg=name)

    with pytest.raises(ValueError, match="sequence_length"):
        BertWordPacker(uncased_tokenizer, 2)
    with pytest.raises(ValueError, match="RaggedTensor"):
        packer(tf.constant([["a", "b"]]))
    with pytest.raises(ValueError, match="BertTokenizer"):
        BertWordPacker("vocab.txt", 8)


# --- Metrics -------------------------------------------------------------------------------


def test_token_accuracy():
    assert token_accuracy([["A", "B"], ["C"]], [["A", "C"], ["C"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="Sentence 1: 1 true tags but 2"):
        token_accuracy([["A"], ["B"]], [["A"], ["B", "B"]])
    with pytest.raises(ValueError, match="2 sentences but pred_tags has 1"):
        token_accuracy([["A"], ["B"]], [["A"]])


def test_entity_f1_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O"], ["O", "I-PER", "I-PER", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC", "O"], ["B-ORG", "B-MISC"], ["O", "B-PER", "I-PER", "O"]]
    # True: PER 0-1, LOC 3, ORG, PER 1-2 (I- after O starts an entity) = 4.
    # Pred: PER 0, LOC 3, ORG, MISC, PER 1-2 = 5. Correct: LOC, ORG, PER 1-2 = 3.
    got = entity_f1(true, pred)
    assert (got["num_true"], got["num_pred"], got["num_correct"]) == (4, 5, 3)
    assert got["precision"] == pytest.approx(3 / 5) and got["recall"] == pytest.approx(3 / 4)
    assert got["f1"] == pytest.approx(2 * 3 / (5 + 4))
    assert got["per_type"]["PER"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert got["per_type"]["MISC"]["support"] == 0
    assert entity_f1([["O", "O"]], [[None, "O"]])["f1"] == 0.0


SEQEVAL_CASES = [
    ("IOB2", [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]]),
    ("IOB2", [["B-PER", "I-PER", "O"], ["B-LOC", "B-LOC"]], [["O", "I-PER", "I-PER"], ["B-LOC", "I-LOC"]]),
    ("IOB2", [["B-PER", "I-LOC", "I-LOC", "O", "I-ORG"]], [["B-PER", "B-LOC", "I-LOC", "O", "B-ORG"]]),
    ("IOB2", [["B-MISC", "I-MISC", "I-PER", "B-PER"], ["O", "O"]], [["B-MISC", "I-MISC", "B-PER", "I-PER"], ["B-X", "I-X"]]),
    ("IOB2", [["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["I-PER", "O"]]),  # no crossing sentences
    ("IOB1", [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]], [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]]),
    ("IOBES", [["S-PER", "B-LOC", "E-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]],
     [["S-PER", "B-LOC", "I-LOC", "E-LOC", "E-ORG", "I-ORG", "E-ORG"]]),
    ("IOB2", [["B-PER", "O"]], [["O", "O"]]),  # nothing predicted: precision 0 (seqeval's zero_division)
]


@pytest.mark.parametrize("scheme,true,pred", SEQEVAL_CASES)
def test_entity_f1_matches_seqeval(scheme, true, pred):
    seqeval = pytest.importorskip("seqeval.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = seqeval.classification_report(true, pred, output_dict=True)
        f1 = seqeval.f1_score(true, pred)
        precision, recall = seqeval.precision_score(true, pred), seqeval.recall_score(true, pred)
    got = entity_f1(true, pred, scheme=scheme)
    assert got["f1"] == pytest.approx(f1) and got["precision"] == pytest.approx(precision)
    assert got["recall"] == pytest.approx(recall)
    types = {k for k in report if not k.endswith(" avg")}
    assert set(got["per_type"]) == types
    for name in types:
        expected = {key: report[name][key] for key in ("precision", "recall", "support")}
        expected["f1"] = report[name]["f1-score"]
        assert got["per_type"][name] == pytest.approx(expected), name


def test_entity_f1_errors():
    with pytest.raises(ValueError, match="Sentence 0: 2 true tags but 1"):
        entity_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match=r"pred sentence 0, word 1: tag 'NOUN'"):
        entity_f1([["O", "O"]], [["O", "NOUN"]])
    with pytest.raises(ValueError, match=r"true sentence 0, word 0: tag 'S-PER'"):
        entity_f1([["S-PER"]], [["O"]], scheme="IOB2")
    with pytest.raises(ValueError, match="scheme"):
        entity_f1([["O"]], [["O"]], scheme="BILOU")


def test_masked_sparse_categorical_accuracy():
    metric = MaskedSparseCategoricalAccuracy()
    labels = np.array([[-100, 1, 0, -100], [-100, 2, -100, -100]])
    logits = np.eye(3, dtype=np.float32)[[[2, 1, 1, 0], [0, 2, 0, 0]]]
    metric.update_state(labels, logits)  # counted: (1 ok), (0 vs 1 wrong), (2 ok) -> 2/3
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.update_state(labels[:1], logits[:1], sample_weight=np.array([[3.0]]))  # + 3 of 6
    assert float(metric.result()) == pytest.approx((2 + 3) / (3 + 6))
    metric.reset_state()
    assert float(metric.result()) == 0.0
    clone = MaskedSparseCategoricalAccuracy.from_config(
        MaskedSparseCategoricalAccuracy(ignore_label=-1, name="acc").get_config())
    assert (clone.ignore_label, clone.name) == (-1, "acc")
    clone.update_state(np.array([[-1, 0]]), logits[0, :2][None])
    assert float(clone.result()) == 0.0
