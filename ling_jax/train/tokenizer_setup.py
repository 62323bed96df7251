"""The experiment's tokenizer: the built-in byte-level BPE or a user's tokenizer.json."""

from __future__ import annotations

import pathlib

from ling_jax.data.builtin import builtin_tokenizer
from ling_jax.data.tokenizers import load_tokenizer


def build_tokenizer(tok_cfg, model_cfg, workdir: pathlib.Path):
    """Builds or loads it; its vocabulary must fit the model's embedding table."""
    if tok_cfg.kind == "builtin":
        vocab = int(tok_cfg.get("vocab_size", 0) or model_cfg.vocab_size)
        tokenizer = builtin_tokenizer(vocab, tok_cfg.get("cache_dir", None) or None)
    else:
        tokenizer = load_tokenizer(tok_cfg.path)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
                         f"{model_cfg.vocab_size}; raise model.vocab_size or use a smaller tokenizer")
    return tokenizer
