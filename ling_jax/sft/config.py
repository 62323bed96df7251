"""The `sft` block of a phase of kind "sft": held-out tool-call evaluation settings.

phases.<name>.sft (every field optional):
  eval_problems=200   held-out built-in tool-call examples scored before and after (0: none)
  eval_every=0        also score every this many phase steps (0: at the start and end only)
  eval_seed=0, eval_num_tools=3   which held-out examples, how many schemas each offers
  max_new_tokens=48   tokens an evaluated response may take
The chat template is the experiment's `tokenizer.chat_template` (data/chat_template.py); the
phase's data sources hold conversations (chat_jsonl, chat_tfds, builtin_tool_calls, or
array_record files written by data.chat_encoding.write_chat_records).
"""

from __future__ import annotations

from typing import Any

from ling_jax.data.chat_template import chat_template
from ling_jax.data.tool_calls import FUNCTIONS

SFT_DEFAULTS: dict[str, Any] = dict(eval_problems=200, eval_every=0, eval_seed=0,
                                    eval_num_tools=3, max_new_tokens=48)


def sft_settings(phase) -> dict[str, Any]:
    """The phase's sft block with defaults filled in (unknown fields rejected)."""
    given = phase.get("sft", None) or {}
    if hasattr(given, "to_dict"):
        given = given.to_dict()
    unknown = sorted(set(given) - set(SFT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed {sorted(SFT_DEFAULTS)}")
    return {**SFT_DEFAULTS, **given}


def validate_sft_phase(name: str, phase, experiment) -> dict[str, Any]:
    """Raises ValueError naming the field; returns the settings."""
    where = f"phases.{name}.sft"
    try:
        sft = sft_settings(phase)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for field in ("eval_problems", "eval_every", "eval_seed", "max_new_tokens"):
        value = sft[field]
        minimum = 1 if field == "max_new_tokens" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{where}.{field}={value!r} must be an int >= {minimum}")
    if not 1 <= sft["eval_num_tools"] <= len(FUNCTIONS):
        raise ValueError(f"{where}.eval_num_tools={sft['eval_num_tools']} must be in "
                         f"[1, {len(FUNCTIONS)}]")
    if sft["max_new_tokens"] >= int(phase.seq_len):
        raise ValueError(f"{where}.max_new_tokens={sft['max_new_tokens']} must be below "
                         f"seq_len={phase.seq_len}")
    try:
        chat_template(experiment.tokenizer.get("chat_template", None))
    except ValueError as e:
        raise ValueError(f"tokenizer.{e}") from None
    return sft
