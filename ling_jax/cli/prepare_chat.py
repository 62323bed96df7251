"""`ling-jax prepare-chat --input 'chats/*.jsonl' --tokenizer tok.json --out chats.arrayrecord`.

Renders conversation JSONL (`{"messages": [...], "tools": [...]}` per line) with a chat template
(--chat_template: a preset name or a JSON file of template fields; default "ling") and tokenizes
it once into ArrayRecord token records with assistant-only target masks: large SFT sets then read
through an `array_record` source with no tokenizer work per step. Use the same template in the
experiment's `tokenizer.chat_template`.
"""

from __future__ import annotations

import pathlib

from absl import flags

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path
from ling_jax.data.chat_encoding import prepare, read_template

_INPUT = flags.DEFINE_list("input", None, "conversation JSONL files or globs")
_TOKENIZER = DEFINE_path("tokenizer", None, "tokenizer.json (or a directory holding one)")
_OUT = DEFINE_path("out", None, "output ArrayRecord file (must not exist)")
_TEMPLATE = flags.DEFINE_string("chat_template", None,
                                "a preset name (ling, compact) or a JSON file of template fields")
_MESSAGES_KEY = flags.DEFINE_string("messages_key", "messages", "field holding the turns")
_TOOLS_KEY = flags.DEFINE_string("tools_key", "tools", "field holding the tool schemas")


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not _INPUT.value or not _OUT.value or not _TOKENIZER.value:
        raise ValueError("--input, --tokenizer and --out are required")
    out = pathlib.Path(_OUT.value)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose another --out")
    template = read_template(_TEMPLATE.value)
    from ling_jax.data.sources import resolve_paths
    from ling_jax.data.tokenizers import load_tokenizer

    inputs = resolve_paths(_INPUT.value, field="--input")
    tokenizer = load_tokenizer(_TOKENIZER.value)
    count = prepare(inputs, tokenizer, template, out, messages_key=_MESSAGES_KEY.value,
                    tools_key=_TOOLS_KEY.value)
    print(f"wrote {count} conversations from {len(inputs)} file(s) -> {out}")
