"""Sentence segmentation: per-token pieces, byte-level decoders, CJK, masks."""

from __future__ import annotations

import numpy as np
import pytest

from ling_jax.rl.segmentation import (
    batch_sentence_ids,
    response_sentence_ids,
    sentence_ids_from_pieces,
    token_pieces,
)


@pytest.mark.parametrize(
    "pieces, expected",
    [
        (["Hi", " there", ".", " How", " are", " you", "?"], [0, 0, 0, 1, 1, 1, 1]),
        # A run of pauses and the whitespace after it closes one sentence.
        (["Wait", "?!", "\n\n", "Yes", "...", " ok"], [0, 0, 0, 1, 1, 2]),
        # Newlines alone split; trailing text without punctuation is a sentence.
        (["line", " one", "\n", "line", " two"], [0, 0, 0, 1, 1]),
        (
            ["你好", "。", "他", "好", "！", "真的", "？", "是", "；", "嗯"],
            [0, 0, 1, 1, 1, 2, 2, 3, 3, 4],
        ),
        # Several pauses inside one token: the token sits where its text starts.
        (["a", ". b. c", "d", "!"], [0, 0, 1, 1]),
        # One-token sentences.
        (["A", ".", "B", ".", "C", "."], [0, 0, 1, 1, 2, 2]),
        (["Yes", ".", "No", ";", "x", ":", "y"], [0, 0, 1, 1, 2, 2, 3]),
        # Decimal points, clock times and thousands commas between digits are no pauses.
        (["x", " =", " 3", ".", "14", " and", " 10", ":", "30", "."], [0] * 10),
        # Empty tokens (pieces of a multi-byte char) go with the next text; trailing with the last.
        (["ok", ".", "", "", "再", "见", ""], [0, 0, 1, 1, 1, 1, 1]),
        (["", "", "start"], [0, 0, 0]),
        ([" ", "lead", "."], [0, 0, 0]),
        (["...", "go"], [0, 1]),
        ([], []),
    ],
)
def test_sentence_ids_from_pieces(pieces, expected):
    got = sentence_ids_from_pieces(pieces)
    assert got.dtype == np.int32
    assert got.tolist() == expected


def test_configurable_pause_set():
    pieces = ["a", ",", " b", ".", " c"]
    assert sentence_ids_from_pieces(pieces, pause_chars=",").tolist() == [0, 0, 1, 1, 1]
    assert sentence_ids_from_pieces(["3", ".", "5"], keep_number_separators=False).tolist() == [
        0,
        0,
        1,
    ]


def _byte_decode(ids: list[int]) -> str:
    """A byte-level tokenizer: every token is one UTF-8 byte (splits multi-byte chars)."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_byte_level_decode_with_multibyte_characters():
    text = "你好。他说：ok! é\nfin"
    ids = list(text.encode("utf-8"))
    pieces = token_pieces(ids, _byte_decode)
    assert "".join(pieces) == text
    got = sentence_ids_from_pieces(pieces)
    # Expected from the characters: each char's bytes share its sentence.
    # The full-width colon "：" is not in the default set (CJK pauses are 。！？；).
    per_char = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3]
    expected = [s for c, s in zip(text, per_char, strict=True) for _ in c.encode("utf-8")]
    assert got.tolist() == expected


class _SentencePieceLike:
    """Decoding drops the leading space of the first piece, as SentencePiece does."""

    vocab = ["▁Hello", "▁world", ".", "▁Next", "▁one", "!", "▁", "\n"]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_token_pieces_keep_spaces_of_sentencepiece_decoders():
    tok = _SentencePieceLike()
    ids = [0, 1, 2, 3, 4, 5, 7, 0]
    pieces = token_pieces(ids, tok.decode)
    assert pieces == ["Hello", " world", ".", " Next", " one", "!", "\n", " Hello"]
    assert "".join(pieces) == tok.decode(ids)
    assert sentence_ids_from_pieces(pieces).tolist() == [0, 0, 0, 1, 1, 1, 1, 2]


def test_response_sentence_ids_marks_prompt_and_padding():
    tok = _SentencePieceLike()
    tokens = np.array([3, 4, 0, 1, 2, 3, 4, 0, 0])
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0], bool)
    got = response_sentence_ids(tokens, mask, tok.decode)
    assert got.tolist() == [-1, -1, 0, 0, 0, 1, 1, -1, -1]
    batch = batch_sentence_ids(np.stack([tokens, tokens]), np.stack([mask, ~mask]), tok.decode)
    assert batch.shape == (2, 9) and batch.dtype == np.int32
    assert batch[0].tolist() == got.tolist()
    assert batch[1].tolist() == [0, 0, -1, -1, -1, -1, -1, 0, 0]
    assert response_sentence_ids(tokens, np.zeros(9, bool), tok.decode).tolist() == [-1] * 9
    with pytest.raises(ValueError, match="response_mask"):
        response_sentence_ids(tokens, mask[:3], tok.decode)


def test_real_bpe_tokenizer_round_trip():
    """A byte-level BPE trained in-process (no download): pieces rebuild the text, ids follow
    the sentences of a regex split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = ["The cat sat. Did it? Yes!\n新的句子。好的；完", "3.5 apples: fine. 数字 12."] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    text = "The cat sat. Did it? Yes!\n新的句子。好的；完 3.5 apples: fine"
    ids = tok.encode(text).ids
    pieces = token_pieces(ids, tok.decode)
    assert "".join(pieces) == text
    got = sentence_ids_from_pieces(pieces)
    assert got[0] == 0 and np.all(np.diff(got) >= 0) and set(np.diff(got)) <= {0, 1}
    # Sentences: "The cat sat." "Did it?" "Yes!\n" "新的句子。" "好的；" "完 3.5 apples:" "fine"
    assert got[-1] == 6
    first_of = {s: "".join(p for p, g in zip(pieces, got, strict=True) if g == s) for s in range(7)}
    assert first_of[3].strip() == "新的句子。" and first_of[5].strip() == "完 3.5 apples:"
