"""Character spans of WordPieces for SQuAD: a Python replay of BERT's BasicTokenizer.

Holds the helpers `kbert.data.squad.create_squad_features` uses to give every
WordPiece of a context its `[start, end)` character span in the original text:
`_basic_tokens` (google-research/bert `tokenization.py` `BasicTokenizer`, with
`_is_punctuation` and the `_is_chinese_char` ranges), `_piece_char_spans` (the
pieces of one word lined up with its basic tokens) and `_tokenize` (batched
calls of the in-graph `kbert.text.BertTokenizer`). These spans replace
google-research/bert `run_squad.py`'s `get_final_text` alignment heuristic.
"""

import unicodedata

import numpy as np

# BERT `_is_chinese_char`: CJK Unified Ideographs blocks (not Hangul/Kana).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_punctuation(char):
    """BERT `_is_punctuation`: ASCII non-alphanumeric symbols and Unicode P*."""
    cp = ord(char)
    return (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or unicodedata.category(char).startswith("P"))


def _basic_tokens(text, lowercase):
    """BERT's BasicTokenizer in Python, keeping where each character came from.

    Deletes NUL, U+FFFD and control/format characters (Cc but tab/newline/
    return, Cf); splits on whitespace (space, tab, newline, return, Zs); makes
    each CJK ideograph and each punctuation character its own token; with
    `lowercase`, lower-cases, NFD-decomposes and deletes Mn marks. Mirrors
    `kbert.text.normalization.normalize_text` plus the tensorflow-text split.

    Returns:
        list of tokens, each a list with, for every character of the
        normalised token, the `[start, end)` span in `text` it came from. A
        combining mark deleted by `lowercase` joins the span before it, so
        "e\u0301" maps back whole.
    """
    tokens, current = [], None
    for i, char in enumerate(text):
        category = unicodedata.category(char)
        if char in "\x00\ufffd" or (category in ("Cc", "Cf") and char not in "\t\n\r"):
            continue
        if char in " \t\n\r" or category == "Zs":
            current = None
            continue
        if any(lo <= ord(char) <= hi for lo, hi in _CJK_RANGES):
            tokens.append([[i, i + 1]])
            current = None
            continue
        normal = char
        if lowercase:
            normal = unicodedata.normalize("NFD", char.lower())
            normal = "".join(c for c in normal if unicodedata.category(c) != "Mn")
            if not normal and current:
                current[-1][1] = i + 1
        for c in normal:
            if _is_punctuation(c):
                tokens.append([[i, i + 1]])
                current = None
            else:
                if current is None:
                    current = []
                    tokens.append(current)
                current.append([i, i + 1])
    return tokens


def _piece_char_spans(word, pieces, lowercase):
    """Character span `(start, end)` in `word` of each WordPiece string of it.

    A piece not starting with `##` opens a new basic token. If the pieces do
    not line up with `_basic_tokens` (count or length), each piece gets the
    span of its whole basic token, or of the whole word.
    """
    tokens = _basic_tokens(word, lowercase)
    starts = [k for k, p in enumerate(pieces) if not p.startswith("##")]
    if len(starts) != len(tokens):
        return [(0, len(word))] * len(pieces)
    spans = []
    for token, begin, end in zip(tokens, starts, starts[1:] + [len(pieces)]):
        lengths = [len(p) - 2 * p.startswith("##") for p in pieces[begin:end]]
        if pieces[begin] == "[UNK]" or sum(lengths) != len(token):
            spans.extend([(token[0][0], token[-1][1])] * (end - begin))
            continue
        offset = 0
        for n in lengths:
            spans.append((token[offset][0], token[offset + n - 1][1]))
            offset += n
    return spans


def _tokenize(tokenizer, texts, chunk_size=50_000):
    """Batched `tokenizer` calls; returns one list of int ids per text."""
    out = []
    for i in range(0, len(texts), chunk_size):
        ragged = tokenizer(list(texts[i:i + chunk_size]))
        values = ragged.values.numpy().tolist()
        bounds = np.cumsum(ragged.row_lengths().numpy()).tolist()
        out.extend(values[a:b] for a, b in zip([0] + bounds[:-1], bounds))
    return out
