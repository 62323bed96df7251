"""`ling-jax train-tokenizer --input 'corpus/*.txt' --vocab_size 32768 --out tokenizer.json`.

Trains a byte-level BPE (HF `tokenizers`) on text files or JSONL (`--text_key`), deterministic.
"""

from __future__ import annotations

import glob
import json
import pathlib

from absl import flags

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_INPUT = flags.DEFINE_list("input", None, "text/JSONL files or globs")
_VOCAB = flags.DEFINE_integer("vocab_size", 32768, "vocabulary size (special tokens included)")
_OUT = DEFINE_path("out", None, "output tokenizer.json (must not exist)")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "field read from .jsonl files")


def _texts(paths: list[pathlib.Path], text_key: str):
    for path in paths:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)[text_key]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise ValueError(f"{path}:{n}: not a JSON object with a {text_key!r} "
                                             "field (set --text_key)") from None
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not _INPUT.value or not _OUT.value:
        raise ValueError("--input and --out are required")
    out = pathlib.Path(_OUT.value)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose another --out")
    paths = sorted({pathlib.Path(p) for pattern in _INPUT.value for p in glob.glob(pattern)})
    if not paths:
        raise ValueError(f"--input {_INPUT.value} matches no file")
    if _VOCAB.value < 260:
        raise ValueError(f"--vocab_size must be >= 260 (256 bytes + specials), got {_VOCAB.value}")
    from ling_jax.data.tokenizers import train_bpe

    tok = train_bpe(_texts(paths, _TEXT_KEY.value), _VOCAB.value, out)
    print(f"trained a {tok.vocab_size}-token byte-level BPE on {len(paths)} file(s) -> {out}")
