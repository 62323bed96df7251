"""Tokenizers: a small protocol, a wrapper for HF `tokenizers` files, byte-level BPE training."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import tokenizers as hf

# Ling's convention (ling2-reference §1): eos = pad = <|endoftext|>, bos = <|startoftext|>.
EOS_TOKEN, BOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|startoftext|>", "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN)
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>")
_BOS_CANDIDATES = (BOS_TOKEN, "<s>", "<|begin_of_text|>", "<bos>")
_PAD_CANDIDATES = (PAD_TOKEN, "<pad>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and the samplers need from a tokenizer."""

    vocab_size: int
    eos_id: int
    pad_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without added special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens dropped)."""
        ...


def _token_name(value: object) -> str | None:
    """A token from tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the `Tokenizer` protocol."""

    def __init__(self, tok: hf.Tokenizer, *, eos_token: str | None = None,
                 bos_token: str | None = None, pad_token: str | None = None):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eos_id = self._find("eos_token", eos_token, _EOS_CANDIDATES)
        if eos_id is None:
            raise ValueError(f"tokenizer has none of the end-of-text tokens {_EOS_CANDIDATES}; "
                             "pass eos_token=... naming its end-of-document token")
        self.eos_id: int = eos_id
        self.bos_id = self._find("bos_token", bos_token, _BOS_CANDIDATES)
        pad_id = self._find("pad_token", pad_token, _PAD_CANDIDATES)
        self.pad_id = self.eos_id if pad_id is None else pad_id

    def _find(self, field: str, explicit: str | None, candidates: Sequence[str]) -> int | None:
        if explicit is not None:
            found = self.tok.token_to_id(explicit)
            if found is None:
                raise ValueError(f"{field}={explicit!r} is not in the tokenizer's vocabulary")
            return found
        for name in candidates:
            found = self.tok.token_to_id(name)
            if found is not None:
                return found
        return None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many texts at once (parallel in Rust)."""
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: str | os.PathLike) -> None:
        self.tok.save(str(path))


def load_tokenizer(path: str | os.PathLike, *, eos_token: str | None = None,
                   bos_token: str | None = None, pad_token: str | None = None) -> HFTokenizer:
    """Loads a tokenizer.json (or a directory holding one, e.g. a Ling checkpoint).

    Special tokens come from the arguments, else from a tokenizer_config.json beside the file
    (HF convention), else from the usual names (<|endoftext|>, </s>, ...).
    """
    path = pathlib.Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"tokenizer file {file} does not exist; give a tokenizer.json path")
    config_file = file.parent / "tokenizer_config.json"
    names: dict[str, str | None] = {}
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        names = {k: _token_name(config.get(k)) for k in ("eos_token", "bos_token", "pad_token")}
    return HFTokenizer(hf.Tokenizer.from_file(str(file)),
                       eos_token=eos_token or names.get("eos_token"),
                       bos_token=bos_token or names.get("bos_token"),
                       pad_token=pad_token or names.get("pad_token"))


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike | None = None,
              *, special_tokens: Sequence[str] = SPECIAL_TOKENS, min_frequency: int = 2,
              eos_token: str | None = None) -> HFTokenizer:
    """Trains a byte-level BPE (deterministic for the same texts) and saves it to `out_path`.

    Special tokens get the first ids, in order; eos_token names the end-of-document one when it
    is not one of the usual names (<|endoftext|>, </s>, ...).
    """
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE; "
                         f"use at least {256 + len(special_tokens)}")
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    wrapped = HFTokenizer(tok, eos_token=eos_token)
    if out_path is not None:
        out_path = pathlib.Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        wrapped.save(tmp)
        os.replace(tmp, out_path)  # atomic: a concurrent reader never sees half a file
    return wrapped
