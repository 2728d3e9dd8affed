"""SQuAD: reading, windows, oracle answers on real SQuAD v1.1 data, official EM/F1.

References used here, none of them kbert: the SQuAD annotations themselves
(answer texts and character offsets), HuggingFace `tokenizers` (piece ids and
character offsets), hand-worked windows from run_squad's `_check_is_max_context`
docstring, and EM/F1 values worked out by hand from the official definitions.
"""

import collections
import json
import unicodedata

import numpy as np
import pytest

from kbert.data.squad import (
    SquadExample,
    create_squad_features,
    postprocess_squad,
    read_squad_examples,
)
from kbert.metrics.squad import (
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_evaluate,
)
from tests.conftest import SHARED_DATA, UNCASED_VOCAB

SQUAD = SHARED_DATA / "squad-v1.1"


def _require(path):
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set KBERT_SHARED_DATA)")
    return path


def _is_boundary(char):
    """Whitespace, BERT punctuation (ASCII symbols, Unicode P*) or a CJK ideograph."""
    cp = ord(char)
    return (char.isspace() or unicodedata.category(char) in ("Zs", "Cc")
            or 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or unicodedata.category(char).startswith("P") or 0x4E00 <= cp <= 0x9FFF)


def _on_token_boundaries(context, start, text):
    """The annotated span starts and ends on BERT basic-token boundaries."""
    s, e = start + len(text) - len(text.lstrip()), start + len(text.rstrip())
    return ((s == 0 or _is_boundary(context[s - 1]) or _is_boundary(context[s]))
            and (e == len(context) or _is_boundary(context[e]) or _is_boundary(context[e - 1])))


def _example(context, question="what?", qas_id="q"):
    """A SquadExample by hand; words split on plain spaces only (as run_squad)."""
    words = [word for word in context.split(" ") if word]
    spans, cursor = [], 0
    for word in words:
        cursor = context.index(word, cursor)
        spans.append((cursor, cursor + len(word)))
        cursor += len(word)
    return SquadExample(qas_id, question, context, words, spans, [])


def _oracle_logits(features, pad_to=None):
    """Big logits at the labels of the window where the start has max context.

    Positions past the window (padding) get an even bigger value, which
    `postprocess_squad` must ignore.
    """
    starts, ends, chosen = [], [], collections.Counter()
    for window in features:
        n = len(window.token_ids)
        start, end = np.full(pad_to or n, -10.0), np.full(pad_to or n, -10.0)
        start[n:] = end[n:] = 100.0
        s = window.start_positions
        if s > 0 and window.token_is_max_context[s]:
            start[s], end[window.end_positions] = 10.0, 10.0
            chosen[window.example_index] += 1
        starts.append(start)
        ends.append(end)
    return starts, ends, chosen


@pytest.fixture(scope="module")
def dev_examples(tmp_path_factory):
    """Dev excerpt with, per question, the first reference on token boundaries moved first.

    (Some first references of the official dev file point inside a word,
    e.g. "8" at the "8" of "20–18"; another reference of the same question
    is then used as the training label.)
    """
    dataset = json.loads(_require(SQUAD / "dev-v1.1-excerpt.json").read_text(encoding="utf-8"))
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                ok = [a for a in qa["answers"]
                      if _on_token_boundaries(paragraph["context"], a["answer_start"], a["text"])]
                assert ok, qa["id"]
                qa["answers"].remove(ok[0])
                qa["answers"].insert(0, ok[0])
    path = tmp_path_factory.mktemp("squad") / "dev.json"
    path.write_text(json.dumps(dataset), encoding="utf-8")
    return read_squad_examples(path)


def test_read_dev_excerpt():
    examples = read_squad_examples(_require(SQUAD / "dev-v1.1-excerpt.json"))
    assert len(examples) == 810
    assert sum(len(e.answers) for e in examples) == 2438  # 3 references, a few 2 or 4
    first = examples[0]
    assert first.qas_id == "56be4db0acb8001400a502ec"
    assert first.question_text == "Which NFL team represented the AFC at Super Bowl 50?"
    words = first.doc_tokens[first.start_position:first.end_position + 1]
    assert words == ["Denver", "Broncos"] and not first.is_impossible
    for word, (s, e) in zip(first.doc_tokens, first.word_char_spans):
        assert first.context_text[s:e] == word


@pytest.mark.parametrize("sequence_length,doc_stride", [(384, 128), (128, 64)])
def test_oracle_dev_exact_match_100(dev_examples, uncased_tokenizer, sequence_length, doc_stride):
    features = create_squad_features(dev_examples, uncased_tokenizer, sequence_length,
                                      doc_stride, max_query_length=64, is_training=True)
    assert max(len(w.token_ids) for w in features) == sequence_length
    starts, ends, chosen = _oracle_logits(features, pad_to=sequence_length)
    # Every answer is labelled in exactly one window where its start has max context.
    assert len(chosen) == 810 and set(chosen.values()) == {1}
    predictions = postprocess_squad(dev_examples, features, starts, ends)
    result = squad_evaluate(_require(SQUAD / "dev-v1.1-excerpt.json"), predictions)
    assert result == {"exact_match": 100.0, "f1": 100.0, "count": 810, "missing": 0}
    for example in dev_examples:
        p = predictions[example.qas_id]
        assert (p["start_char"], p["text"]) == (example.answers[0]["answer_start"],
                                                example.answers[0]["text"])
    if sequence_length == 128:
        # Several windows per context, and answers seen by more than one window.
        assert len(features) > 1.9 * 810
        in_window = collections.Counter()
        for w in features:
            in_window[w.example_index] += w.start_positions > 0
        assert sum(n > 1 for n in in_window.values()) > 100


def test_oracle_train_recovers_every_boundary_answer(uncased_tokenizer):
    examples = read_squad_examples(_require(SQUAD / "train-v1.1-excerpt.json"))
    assert len(examples) == 3807
    features = create_squad_features(examples, uncased_tokenizer, 384, 128, 64, is_training=True)
    starts, ends, _ = _oracle_logits(features)
    # Two annotated answers are longer than 30 pieces; lift the cap for the oracle.
    predictions = postprocess_squad(examples, features, starts, ends, max_answer_length=512)
    aligned = recovered = 0
    for example in examples:
        answer = example.answers[0]
        if not _on_token_boundaries(example.context_text, answer["answer_start"], answer["text"]):
            continue
        aligned += 1
        p = predictions[example.qas_id]
        gold = " ".join(answer["text"].split())
        recovered += p["text"] == gold
        assert example.context_text[p["start_char"]:p["end_char"]] == p["text"]
    assert aligned == 3780
    assert recovered == 3780


def test_piece_ids_and_char_spans_match_huggingface_tokenizers(uncased_tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.BertWordPieceTokenizer(str(_require(UNCASED_VOCAB)), lowercase=True)
    examples = read_squad_examples(_require(SQUAD / "dev-v1.1-excerpt.json"))
    contexts = list({e.context_text: e for e in examples}.values())
    tricky = ("Beyoncé's naïve\u200bly a\u00a0b ﬁne 中国人 İstanbul " + "x" * 120
              + " 한국어 Σίσυφος (1895–1943). Ǆemal ½ ™ AT&T's")
    tricky += " e\u0301t\u0301e\u0301 end"
    contexts.append(_example(tricky))
    features = create_squad_features(contexts, uncased_tokenizer, 100_000, 128, 64)
    assert len(features) == len(contexts)
    for example, window in zip(contexts, features):
        encoding = hf.encode(example.context_text, add_special_tokens=False)
        context = window.token_to_orig_map >= 0
        assert window.token_ids[context].tolist() == encoding.ids
        for (start, end), (hf_start, hf_end) in zip(window.token_char_spans[context].tolist(),
                                                    encoding.offsets):
            # kbert also keeps the combining marks that end a piece ("e\u0301").
            assert start == hf_start and end >= hf_end
            assert all(unicodedata.category(c) == "Mn" for c in example.context_text[hf_end:end])


def test_stride_larger_than_window_skips_nothing(uncased_tokenizer):
    words = "one two three four five six seven eight nine ten eleven twelve thirteen".split()
    example = _example(" ".join(words), question="how many?")  # how many ? : 3 pieces
    for stride, expected_windows in [(100, 3), (5, 3), (2, 5)]:
        features = create_squad_features([example], uncased_tokenizer, sequence_length=3 + 3 + 5,
                                          doc_stride=stride)
        assert len(features) == expected_windows
        seen = [w.token_to_orig_map[w.token_to_orig_map >= 0].tolist() for w in features]
        assert [i for window in seen for i in window][:5] == [0, 1, 2, 3, 4]
        assert sorted(set(i for window in seen for i in window)) == list(range(13))
        if stride >= 5:  # no overlap: every word in exactly one window
            assert sum(len(window) for window in seen) == 13
        # Every word has its max context in exactly one window.
        owners = np.concatenate([w.token_to_orig_map[w.token_is_max_context] for w in features])
        assert sorted(owners.tolist()) == list(range(13))


def test_sequence_length_too_short_raises(uncased_tokenizer):
    example = _example("the man went to the store", question="who went?")  # 3 pieces
    with pytest.raises(ValueError, match=r"sequence_length 6 .* 3 pieces"):
        create_squad_features([example], uncased_tokenizer, sequence_length=6)
    assert len(create_squad_features([example], uncased_tokenizer, sequence_length=7)) == 6


def test_max_context_rule_hand_built(uncased_tokenizer):
    # run_squad `_check_is_max_context` docstring: windows of 5 words, stride 3.
    example = _example("the man went to the store and bought a gallon of milk", "who?")
    features = create_squad_features([example], uncased_tokenizer, 2 + 3 + 5, doc_stride=3)
    assert [w.token_to_orig_map[w.token_to_orig_map >= 0].tolist() for w in features] == [
        [0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [6, 7, 8, 9, 10], [9, 10, 11]]
    owner = {}
    for index, w in enumerate(features):
        for word in w.token_to_orig_map[w.token_is_max_context]:
            owner[int(word)] = index
    # Worked by hand: min(left, right) + 0.01 * window length, first window wins ties.
    assert [owner[i] for i in range(12)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    # "bought" (position 8 of window 1) scores highest, but window 1 is not its
    # max context, so window 2's "a gallon" (positions 6-7 there) wins.
    starts = [np.full(len(w.token_ids), -100.0) for w in features]
    ends = [np.full(len(w.token_ids), -100.0) for w in features]
    starts[1][8], ends[1][8] = 50.0, 50.0
    starts[2][6], ends[2][7] = 5.0, 5.0
    p = postprocess_squad([example], features, starts, ends)["q"]
    assert (p["text"], p["start_char"], p["end_char"], p["score"]) == ("a gallon", 37, 45, 10.0)
    assert postprocess_squad([example], features, starts, ends, max_answer_length=2)["q"] == p
    # One piece at most: "a" (5 - 100) ties "gallon" (-100 + 5); the first pair wins.
    short = postprocess_squad([example], features, starts, ends, max_answer_length=1)["q"]
    assert (short["text"], short["score"]) == ("a", -95.0)


def test_max_context_ties_go_to_the_first_window(uncased_tokenizer):
    # Windows of 4 words, stride 1: [0-3], [1-4], [2-5]. Word 2 scores 1 + 0.04 in
    # windows 0 and 1, word 3 in windows 1 and 2: the earlier window keeps it.
    example = _example("one two three four five six", "who?")
    features = create_squad_features([example], uncased_tokenizer, 2 + 3 + 4, doc_stride=1)
    owner = {int(word): index for index, w in enumerate(features)
             for word in w.token_to_orig_map[w.token_is_max_context]}
    assert [owner[i] for i in range(6)] == [0, 0, 0, 1, 2, 2]


def test_training_labels_tighten_to_answer_pieces(uncased_tokenizer):
    context = "The leader was John Smith (1895-1943). The Japanese electronics industry."
    example = _example(context)
    example.answers = [{"text": "1895", "answer_start": context.index("1895")}]
    example.start_position = example.end_position = 5  # "(1895-1943)."
    example.orig_answer_text = "1895"
    japan = _example(context, qas_id="j")
    japan.start_position = japan.end_position = 7  # "Japanese"; the annotation is "Japan"
    japan.orig_answer_text = "Japan"
    features = create_squad_features([example, japan], uncased_tokenizer, 64, is_training=True)
    year = features[0]
    assert year.start_positions == year.end_positions
    assert year.token_ids[year.start_positions] == uncased_tokenizer.token_to_id("1895")
    word = features[1]
    assert word.start_positions == word.end_positions  # the whole word "japanese"
    assert word.token_ids[word.start_positions] == uncased_tokenizer.token_to_id("japanese")
    # Windows that do not hold the whole answer point at [CLS].
    short = create_squad_features([example], uncased_tokenizer, 2 + 3 + 1, is_training=True)
    labels = [(w.start_positions, w.token_ids[w.start_positions]) for w in short]
    assert labels.count((4, uncased_tokenizer.token_to_id("1895"))) == 1
    assert all(label == (0, 101) for label in labels if label[0] != 4)


def test_answer_keeps_original_casing_accents_and_nfd(uncased_tokenizer):
    context = "Café owner Beyonce\u0301's father met J.R.R. Tolkien in Zürich."
    example = _example(context)
    (window,) = create_squad_features([example], uncased_tokenizer, 64)
    ids = window.token_ids.tolist()

    def answer(first_piece, last_piece):
        starts, ends = np.zeros(64), np.zeros(64)
        starts[ids.index(uncased_tokenizer.token_to_id(first_piece))] = 9.0
        ends[ids.index(uncased_tokenizer.token_to_id(last_piece))] = 9.0
        return postprocess_squad([example], [window], [starts], [ends])["q"]

    # NFD "e" + U+0301 stays whole (run_squad's get_final_text would give up here
    # and return the whole word "Beyonce\u0301's").
    p = answer("beyonce", "beyonce")
    assert (p["text"], p["start_char"], p["end_char"]) == ("Beyonce\u0301", 11, 19)
    assert answer("j", "tolkien")["text"] == "J.R.R. Tolkien"
    assert answer("cafe", "cafe")["text"] == "Café"
    assert answer("zurich", "zurich")["text"] == "Zürich"


def test_version_2_no_answer(tmp_path, uncased_tokenizer):
    data = {"data": [{"paragraphs": [{"context": "Denver beat Carolina in 2016.", "qas": [
        {"id": "a", "question": "Who won?", "is_impossible": False,
         "answers": [{"text": "Denver", "answer_start": 0}]},
        {"id": "n", "question": "Who lost in 2020?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "Carolina", "answer_start": 12}]}]}]}]}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    examples = read_squad_examples(path, version_2_with_negative=True)
    assert examples[1].is_impossible and examples[1].start_position is None
    features = create_squad_features(examples, uncased_tokenizer, 32, is_training=True)
    assert [(w.start_positions, w.end_positions) for w in features] == [(5, 5), (0, 0)]
    starts = [np.zeros(32), np.zeros(32)]
    ends = [np.zeros(32), np.zeros(32)]
    starts[0][5] = ends[0][5] = 3.0  # "Denver" 6.0 vs null 0.0
    starts[1][0] = ends[1][0] = 2.0  # null 4.0 vs "carolina" (position 9) 2.0
    starts[1][9] = ends[1][9] = 1.0
    predictions = postprocess_squad(examples, features, starts, ends,
                                    version_2_with_negative=True)
    assert predictions["a"]["text"] == "Denver" and predictions["a"]["null_score_diff"] == -6.0
    assert predictions["n"]["text"] == "" and predictions["n"]["start_char"] is None
    assert squad_evaluate(examples, predictions)["exact_match"] == 100.0
    lenient = postprocess_squad(examples, features, starts, ends, version_2_with_negative=True,
                                null_score_diff_threshold=5.0)
    assert lenient["n"]["text"] == "Carolina"


@pytest.mark.parametrize("qa,message", [
    ({"id": "x1", "question": "Q?", "answers": [{"text": "Carolina", "answer_start": 3}]},
     r"bad\.json: question 'x1': answer text 'Carolina' is not at answer_start 3"),
    ({"id": "x2", "question": "Q?", "answers": []}, r"bad\.json: question 'x2' has no answer"),
    ({"id": "x3", "question": "  ", "answers": []}, r"bad\.json: question 'x3' has an empty"),
    ({"id": "x4", "answers": []}, r"bad\.json: question 'x4' lacks the key\(s\) \['question'\]"),
])
def test_bad_input_names_file_and_question(tmp_path, qa, message):
    path = tmp_path / "bad.json"
    data = {"data": [{"paragraphs": [{"context": "Denver beat Carolina.", "qas": [qa]}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_squad_examples(path)


def test_to_dataset_pads_to_longest_in_batch(dev_examples, uncased_tokenizer):
    features = create_squad_features(dev_examples[:40], uncased_tokenizer, 128, 64,
                                      is_training=True)
    batches = list(features.to_dataset(batch_size=8))
    inputs, labels = batches[0]
    lengths = [len(w.token_ids) for w in features[:8]]
    assert inputs["token_ids"].shape == (8, max(lengths))
    for row, window in enumerate(features[:8]):
        n = len(window.token_ids)
        for name in ("token_ids", "segment_ids", "padding_mask"):
            np.testing.assert_array_equal(inputs[name][row, :n], getattr(window, name))
            assert not inputs[name][row, n:].numpy().any()
    assert labels["start_positions"].numpy().tolist() == [w.start_positions for w in features[:8]]
    assert sum(b[0]["token_ids"].shape[0] for b in batches) == len(features)
    unlabelled = create_squad_features(dev_examples[:3], uncased_tokenizer, 128, 64)
    (only,) = list(unlabelled.to_dataset(batch_size=8))  # inputs alone, no labels
    assert sorted(only) == ["padding_mask", "segment_ids", "token_ids"]
    assert only["token_ids"].shape == (len(unlabelled), max(len(w.token_ids) for w in unlabelled))
    first = [b[1]["start_positions"].numpy().tolist() for b in features.to_dataset(8, True, 3)]
    again = [b[1]["start_positions"].numpy().tolist() for b in features.to_dataset(8, True, 3)]
    assert first == again and first != [b[1]["start_positions"].numpy().tolist()
                                        for b in batches]


def test_normalize_and_exact_match():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("theater, an anthem") == "theater anthem"  # whole words only
    assert normalize_answer("1895–1943") == "1895–1943"  # en dash is not ASCII punctuation
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match_score("U.S.", "US") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0


def test_f1_hand_computed():
    # 2 common of 3 predicted and 2 true tokens: P = 2/3, R = 1, F1 = 0.8.
    assert f1_score("the Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # Bag overlap: "broncos" counts once. P = 1/2, R = 1, F1 = 2/3.
    assert f1_score("Broncos Broncos", "Broncos") == pytest.approx(2 / 3)
    assert f1_score("Santa Clara", "Santa Clara, California") == pytest.approx(0.8)
    assert f1_score("Carolina", "Denver") == 0.0
    # v2.0 rule: an empty normalised answer scores its exact match.
    assert f1_score("", "") == 1.0 and f1_score("the", "") == 1.0
    assert f1_score("", "Denver") == 0.0 and f1_score("Denver", "a") == 0.0


def test_squad_evaluate_max_over_references_and_missing():
    data = {"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "1", "answers": [{"text": "Denver Broncos"}, {"text": "Broncos"}]},
        {"id": "2", "answers": [{"text": "Santa Clara, California"}, {"text": "Levi's"}]},
        {"id": "3", "answers": [{"text": "Denver"}]},
        {"id": "4", "answers": []}]}]}]}
    predictions = {"1": "Broncos", "2": {"text": "Santa Clara"}, "4": "", "extra": "x"}
    with pytest.warns(UserWarning, match=r"1 of 4 questions have no prediction.*'3'"):
        result = squad_evaluate(data, predictions)
    # EM: 1 + 0 + 0 (missing) + 1 (empty vs no answer); F1: 1 + 0.8 + 0 + 1.
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(70.0)
    assert (result["count"], result["missing"]) == (4, 1)
