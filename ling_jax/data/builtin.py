"""Built-in, offline corpora and the built-in tokenizer trained on them.

(a) The Python standard library's own source files: real text on every machine, one document per
    file, files in sorted relative-path order (site-packages and test folders left out); a file
    belongs to "heldout" when the hash of its relative path falls in one bucket of twenty.
(b) Generated arithmetic word problems (data/arithmetic.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from typing import Any

from ling_jax.data.arithmetic import SPLITS as ARITHMETIC_SPLITS
from ling_jax.data.arithmetic import arithmetic_problem, difficulty_at
from ling_jax.data.tokenizers import HFTokenizer, load_tokenizer, train_bpe

PYTHON_SPLITS = ("train", "heldout", "all")
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                            "__pycache__"})
_TOKENIZER_RECIPE = "bpe-v1"  # bump when the training corpus or settings below change


def python_stdlib_files(split: str = "train", *, max_files: int | None = None,
                        max_bytes: int | None = None) -> list[pathlib.Path]:
    """The stdlib .py files of a split, in sorted order, cut at max_files / max_bytes."""
    if split not in PYTHON_SPLITS:
        raise ValueError(f"builtin_python split {split!r} is unknown; use one of {PYTHON_SPLITS}")
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS]  # prune: site-packages is huge
        rel = os.path.relpath(directory, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith(".py")]
    selected, total = [], 0
    for rel in sorted(found):
        bucket = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 20
        if split != "all" and (bucket == 0) != (split == "heldout"):
            continue
        size = (root / rel).stat().st_size
        if max_files is not None and len(selected) >= max_files:
            break
        if max_bytes is not None and selected and total + size > max_bytes:
            break
        selected.append(root / rel)
        total += size
    if not selected:
        raise ValueError(f"no Python standard library files found under {root} for split {split!r}")
    return selected


class PythonSource:
    """One document per standard-library source file (read lazily, UTF-8)."""

    def __init__(self, split: str = "train", *, max_files: int | None = None,
                 max_bytes: int | None = None, name: str = "builtin_python"):
        self.name = name
        self.files = [str(p) for p in python_stdlib_files(split, max_files=max_files,
                                                          max_bytes=max_bytes)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        text = pathlib.Path(self.files[index]).read_text(encoding="utf-8", errors="replace")
        return {"index": index, "text": text}


class ArithmeticSource:
    """`num_docs` generated problems; prompt/completion records (prompt masked) or plain text."""

    def __init__(self, split: str = "train", *, num_docs: int = 100_000,
                 difficulty: int | Sequence[int] = (1, 2, 3), seed: int = 0,
                 mask_prompt: bool = True, name: str = "builtin_arithmetic"):
        if split not in ARITHMETIC_SPLITS:
            raise ValueError(f"builtin_arithmetic split {split!r} is unknown; use one of "
                             f"{ARITHMETIC_SPLITS}")
        if num_docs < 1:
            raise ValueError(f"builtin_arithmetic num_docs={num_docs} must be >= 1")
        self.name, self.split, self.num_docs, self.seed = name, split, num_docs, seed
        self.difficulty = difficulty if isinstance(difficulty, int) else tuple(difficulty)
        self.mask_prompt = mask_prompt
        difficulty_at(0, self.difficulty)  # validates a list early

    def __len__(self) -> int:
        return self.num_docs

    def __getitem__(self, index: int) -> dict[str, Any]:
        problem = arithmetic_problem(index, split=self.split, seed=self.seed,
                                     difficulty=difficulty_at(index, self.difficulty))
        if self.mask_prompt:
            return {"index": index, "prompt": problem.prompt, "completion": problem.completion}
        return {"index": index, "text": problem.text}


def builtin_corpus_texts(*, max_bytes: int = 8_000_000, num_arithmetic: int = 4000
                         ) -> Iterator[str]:
    """Texts the built-in tokenizer is trained on: stdlib train files, then arithmetic problems."""
    for path in python_stdlib_files("train", max_bytes=max_bytes):
        yield path.read_text(encoding="utf-8", errors="replace")
    source = ArithmeticSource("train", num_docs=num_arithmetic, difficulty=(1, 2, 3, 4, 5),
                              mask_prompt=False)
    for i in range(num_arithmetic):
        yield source[i]["text"]


def default_cache_dir() -> pathlib.Path:
    """$LING_JAX_CACHE, else ~/.cache/ling_jax."""
    return pathlib.Path(os.environ.get("LING_JAX_CACHE",
                                       pathlib.Path.home() / ".cache" / "ling_jax"))


def builtin_tokenizer(vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None,
                      *, max_bytes: int = 8_000_000) -> HFTokenizer:
    """Byte-level BPE trained once on the built-in corpora, then loaded from `cache_dir`.

    The cache key covers the recipe, vocab size, Python version and the corpus file list, so a
    different interpreter (different stdlib) trains its own tokenizer instead of reusing one.
    """
    files = python_stdlib_files("train", max_bytes=max_bytes)
    fingerprint = json.dumps([_TOKENIZER_RECIPE, vocab_size, sys.version, max_bytes,
                              [(p.name, p.stat().st_size) for p in files]])
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir or default_cache_dir()) / f"builtin_bpe_{vocab_size}_{key}.json"
    if path.is_file():
        return load_tokenizer(path)
    return train_bpe(builtin_corpus_texts(max_bytes=max_bytes), vocab_size, path)
