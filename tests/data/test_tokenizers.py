"""Tokenizers: round trips, deterministic BPE training, special tokens, loading, the cache."""

import json

import pytest

from ling_jax.data import builtin_tokenizer, load_tokenizer, train_bpe
from ling_jax.data.tokenizers import SPECIAL_TOKENS, Tokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "Grüße, 世界! naïve café — 42 × 7 = 294",
         "\t  leading whitespace and trailing  \n\n", "emoji 🙂 and ünïcödé", ""]
CORPUS = [f"line {i}: the quick brown fox {i * 7} jumps over {i % 13} lazy dogs\n" * 3
          for i in range(300)]


def test_round_trip_and_protocol(tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    assert tokenizer.vocab_size == 1024
    # Merges compress: code is shorter in tokens than in bytes.
    code = "import os\nfor name in sorted(os.listdir(path)):\n    print(name)\n"
    assert len(tokenizer.encode(code)) < 0.6 * len(code.encode())


def test_special_tokens(tokenizer):
    ids = [tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id]
    assert ids == [tokenizer.tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == 3
    # Special tokens are dropped by decode; a literal special string encodes to its id.
    assert tokenizer.decode([tokenizer.eos_id] + tokenizer.encode("hi")) == "hi"
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.eos_id]


def test_train_bpe_is_deterministic(tmp_path):
    a = train_bpe(CORPUS, 400, tmp_path / "a.json")
    b = train_bpe(CORPUS, 400, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert a.vocab_size == 400
    loaded = load_tokenizer(tmp_path / "a.json")
    assert loaded.encode(CORPUS[5]) == b.encode(CORPUS[5])
    assert loaded.decode(loaded.encode(CORPUS[5])) == CORPUS[5]


def test_train_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe(CORPUS, 100)


def test_load_reads_tokenizer_config(tmp_path):
    train_bpe(CORPUS, 300, tmp_path / "tokenizer.json",
              special_tokens=["<|endoftext|>", "<|role_end|>", "<s>"])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<|role_end|>"}, "bos_token": "<s>"}))
    tok = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert tok.eos_id == tok.tok.token_to_id("<|role_end|>") == 1
    assert tok.bos_id == 2
    assert tok.pad_id == tok.eos_id  # no pad token: pad = eos, as in Ling
    assert load_tokenizer(tmp_path, eos_token="<|endoftext|>").eos_id == 0


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    train_bpe(CORPUS, 300, tmp_path / "plain.json", special_tokens=["<unk>"], eos_token="<unk>")
    with pytest.raises(ValueError, match="eos_token"):
        load_tokenizer(tmp_path / "plain.json")
    with pytest.raises(ValueError, match="not in the tokenizer"):
        load_tokenizer(tmp_path / "plain.json", eos_token="<nope>")


def test_builtin_tokenizer_is_cached(tmp_path):
    first = builtin_tokenizer(600, tmp_path, max_bytes=300_000)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = builtin_tokenizer(600, tmp_path, max_bytes=300_000)
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not retrained
    assert second.encode(TEXTS[0]) == first.encode(TEXTS[0])
    # The same recipe trained elsewhere gives the same file (deterministic training).
    builtin_tokenizer(600, tmp_path / "other", max_bytes=300_000)
    assert (tmp_path / "other" / files[0].name).read_text() == files[0].read_text()
