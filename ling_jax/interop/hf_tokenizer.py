"""The tokenizer side of an HF export: tokenizer files, special tokens and generation config.

A transformers user expects `AutoTokenizer.from_pretrained(dir)` to work and `generate()` to stop
at the tokenizer's end-of-text token, so an export carries tokenizer.json, tokenizer_config.json
(special tokens, chat template), special_tokens_map.json and generation_config.json, and
config.json's bos/eos/pad ids are the tokenizer's (the ones `ling-jax generate` uses).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

from ling_jax.data.tokenizers import HFTokenizer, load_tokenizer

# `ling-jax generate --max_new_tokens` default, so that default generate() calls agree.
DEFAULT_MAX_NEW_TOKENS = 64
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer_config.json", "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"


@dataclasses.dataclass(frozen=True)
class TokenizerSource:
    """A checked tokenizer: its tokenizer.json, optional HF side files, and special tokens."""

    tokenizer_json: pathlib.Path
    side_files: tuple[pathlib.Path, ...]  # tokenizer_config / special_tokens_map / *.model ...
    special_tokens: dict[str, str]  # bos_token / eos_token / pad_token → token text
    token_ids: dict[str, int]  # bos_token_id / eos_token_id / pad_token_id
    vocab_size: int


def _read_json(file: pathlib.Path) -> dict:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: not readable JSON ({e}); fix or remove it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: must hold a JSON object")
    return value


def check_tokenizer(path: str | os.PathLike) -> TokenizerSource:
    """Load and check a tokenizer (a tokenizer.json or a directory holding one) before export."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer directory {path} not found; pass --tokenizer PATH "
                                "(a tokenizer.json or the directory holding one)")
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"tokenizer directory {path} holds no tokenizer.json")
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG):
        if (file.parent / name).is_file():
            _read_json(file.parent / name)
    try:
        tok: HFTokenizer = load_tokenizer(file)
    except Exception as e:  # tokenizers raises bare Exceptions on malformed files
        raise ValueError(f"{file}: not a loadable tokenizer ({e})") from None
    ids = {"eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, "bos_token_id": tok.bos_id}
    ids = {k: int(v) for k, v in ids.items() if v is not None}
    tokens = {k.removesuffix("_id"): tok.tok.id_to_token(v) for k, v in ids.items()}
    side = [file.parent / n for n in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, GENERATION_CONFIG)]
    side += sorted(file.parent.glob("*.model"))
    return TokenizerSource(file, tuple(p for p in side if p.is_file()), tokens, ids,
                           int(tok.vocab_size))


def tokenizer_config(source: TokenizerSource, *, chat_template: str | None,
                     model_max_length: int) -> dict:
    """tokenizer_config.json: the source's own (if any) with special tokens and template set."""
    own = source.tokenizer_json.parent / TOKENIZER_CONFIG
    config = _read_json(own) if own in source.side_files else {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,  # ling-jax encodes without special tokens
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "padding_side": "left",  # batched generate() pads prompts on the left
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids
    }
    for key, token in source.special_tokens.items():
        config.setdefault(key, token)
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def generation_config(source: TokenizerSource, transformers_version: str | None) -> dict:
    """generation_config.json: greedy, stop at EOS, ling-jax generate's default length."""
    own = source.tokenizer_json.parent / GENERATION_CONFIG
    if own in source.side_files:
        return _read_json(own)
    config = dict(sorted(source.token_ids.items()), max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    if transformers_version:
        config["transformers_version"] = transformers_version
    return config


def write_tokenizer(out: pathlib.Path, source: TokenizerSource, *, chat_template: str | None,
                    model_max_length: int, transformers_version: str | None) -> None:
    """Write the four HF tokenizer files (plus any *.model) into `out`."""
    shutil.copyfile(source.tokenizer_json, out / "tokenizer.json")
    for file in source.side_files:
        if file.suffix == ".model":
            shutil.copyfile(file, out / file.name)
    own_map = source.tokenizer_json.parent / SPECIAL_TOKENS_MAP
    files = {
        TOKENIZER_CONFIG: tokenizer_config(source, chat_template=chat_template,
                                           model_max_length=model_max_length),
        SPECIAL_TOKENS_MAP: (_read_json(own_map) if own_map in source.side_files
                             else dict(sorted(source.special_tokens.items()))),
        GENERATION_CONFIG: generation_config(source, transformers_version),
    }
    for name, value in files.items():
        (out / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
