"""From a source record to one document's training features, computed before any packing.

A record is a dict with "index" (its position in the source) and one of:
  {"text": str}                          tokenized, then EOS appended (BOS first when asked);
  {"prompt": str, "completion": str}     as text, but the prompt's tokens are not trained targets;
  {"tokens": int[L], "target_mask"?: bool[L]}   pre-tokenized, taken as is;
  {"messages": [...], "tools"?: [...]}  a conversation rendered with the chat template
                                         (data/chat_template.py): only assistant turns trained.
Features of a document of L tokens t_0..t_{L-1} with per-token target mask w:
  inputs[i] = t_i, targets[i] = t_{i+1} (pad_id at i = L-1), loss_mask[i] = w_{i+1} (0 at i = L-1),
so a target is always the next token of the same document and packing cannot leak across documents.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ling_jax.data.chat_encoding import encode_conversation
from ling_jax.data.chat_template import ChatTemplate
from ling_jax.data.tokenizers import Tokenizer


class DocumentEncoder:
    """Picklable map function: record -> {"index", "inputs", "targets", "loss_mask"}."""

    def __init__(self, source_name: str, tokenizer: Tokenizer | None, vocab_size: int,
                 *, pad_id: int = 0, add_bos: bool = False,
                 chat_template: ChatTemplate | None = None):
        self.source_name = source_name
        self.chat_template = chat_template
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.add_bos = add_bos
        if add_bos and (tokenizer is None or tokenizer.bos_id is None):
            raise ValueError(f"source {source_name!r}: add_bos=True but the tokenizer has no "
                             "bos token; set add_bos=False or use a tokenizer with one")

    def _tokens(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids and per-token target mask (None = all trained) of one record."""
        if "tokens" in record:
            return np.asarray(record["tokens"], np.int64), record.get("target_mask")
        tok = self.tokenizer
        if tok is None:
            raise ValueError(f"source {self.source_name!r} holds text (document "
                             f"{record['index']}) but no tokenizer was given to the pipeline")
        bos = [tok.bos_id] if self.add_bos else []
        if "messages" in record:
            return self._conversation(record, bos)
        if "prompt" in record:
            prompt = bos + tok.encode(record["prompt"])
            completion = tok.encode(record["completion"])
            if not completion:  # nothing to train on: counted as an empty document
                return np.zeros(0, np.int64), None
            completion.append(tok.eos_id)
            mask = np.r_[np.zeros(len(prompt), bool), np.ones(len(completion), bool)]
            return np.asarray(prompt + completion, np.int64), mask
        text = record["text"]
        if not text.strip():  # whitespace-only text is an empty document, skipped and counted
            return np.zeros(0, np.int64), None
        return np.asarray(bos + tok.encode(text) + [tok.eos_id], np.int64), None

    def _conversation(self, record: dict[str, Any], bos: list[int]
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.chat_template is None:
            raise ValueError(f"source {self.source_name!r} holds conversations but the pipeline "
                             "has no chat template; set data.chat_template (the sft phase sets "
                             "it from tokenizer.chat_template)")
        where = f"source {self.source_name!r}, document {record['index']}"
        ids, trained = encode_conversation(self.tokenizer, self.chat_template, record, where)
        if not trained.any():  # nothing to train on: counted as an empty document
            return np.zeros(0, np.int64), None
        return np.r_[np.asarray(bos, np.int64), ids], np.r_[np.zeros(len(bos), bool), trained]

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        tokens, mask = self._tokens(record)
        if tokens.size:
            bad = (tokens < 0) | (tokens >= self.vocab_size)
            if bad.any():
                raise ValueError(
                    f"source {self.source_name!r}, document {record['index']}: token id "
                    f"{int(tokens[bad][0])} is outside [0, vocab_size={self.vocab_size}); "
                    "re-tokenize the data or raise the model's vocab_size")
        return document_features(tokens, mask, pad_id=self.pad_id) | {"index": record["index"]}


def document_features(tokens: np.ndarray, target_mask: np.ndarray | None = None, *,
                      pad_id: int = 0) -> dict[str, np.ndarray]:
    """Per-document inputs / next-token targets / loss mask (see the module docstring)."""
    length = int(tokens.shape[0])
    weights = (np.ones(length, np.float32) if target_mask is None
               else np.asarray(target_mask, np.float32))
    if weights.shape != (length,):
        raise ValueError(f"target_mask shape {weights.shape} != tokens shape {(length,)}")
    targets = np.full(length, pad_id, np.int32)
    loss_mask = np.zeros(length, np.float32)
    if length:
        targets[:-1] = tokens[1:]
        loss_mask[:-1] = weights[1:]
    return {"inputs": tokens.astype(np.int32), "targets": targets, "loss_mask": loss_mask}
