"""Chat templates as data: conversations → text segments (trained or not) and the same as Jinja.

A template is a handful of strings (ChatTemplate) named in the experiment's tokenizer config
(`tokenizer.chat_template`: a preset name, or a dict of fields over a preset). One renderer,
`render_segments`, turns `{"messages": [...], "tools": [...]}` into (text, trained) segments; the
training data (documents.py), SFT evaluation, `ling-jax generate --chat` all call it, and
`jinja_template` writes the same rendering as a Jinja string for tokenizer_config.json
(`chat_template`, rendered by HF's `apply_chat_template`); tests check both agree.

Layout (messages in order; a system turn is created to hold tool schemas when tools are given):
  system:    system_start + content [+ "\\n" if content] + tools_intro + ("\\n" + json(tool))*
             + end_of_turn
  user/tool: {user,tool}_start + content + end_of_turn
  assistant: assistant_start | content + (tool_call_start + json({name, arguments})
             + tool_call_end)* + end_of_turn      ("|": only the part after it is trained)
  generation prompt: assistant_start
JSON is `json.dumps(x, ensure_ascii=False)`, which is HF's `tojson`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """The strings of a chat template (see the module docstring for where each goes)."""

    system_start: str
    user_start: str
    assistant_start: str
    tool_start: str
    end_of_turn: str
    tools_intro: str
    tool_call_start: str
    tool_call_end: str


# Ling 2.0's role markers (ling2-reference §7.1: `<role>SYSTEM</role>…<|role_end|>`); the
# tool-result role name and the tool-call markers are this project's choice (not from Ling).
_LING = ChatTemplate(
    system_start="<role>SYSTEM</role>", user_start="<role>HUMAN</role>",
    assistant_start="<role>ASSISTANT</role>", tool_start="<role>OBSERVATION</role>",
    end_of_turn="<|role_end|>", tools_intro="Tools:",
    tool_call_start="<tool_call>", tool_call_end="</tool_call>")
# Short markers for small BPE vocabularies (the built-in tokenizer): few tokens per turn, and the
# end of a turn is the tokenizer's end-of-text token, so generation stops there. Every boundary
# between trained and untrained text falls at a byte-level BPE pre-tokenizer split, so encoding
# segment by segment equals encoding the whole text.
_COMPACT = ChatTemplate(
    system_start="System: ", user_start="User: ", assistant_start="Assistant:\n",
    tool_start="Tool: ", end_of_turn="<|endoftext|>\n", tools_intro="Tools:",
    tool_call_start="<call>", tool_call_end="</call>")
PRESETS: dict[str, ChatTemplate] = {"ling": _LING, "compact": _COMPACT}
DEFAULT_PRESET = "ling"


def chat_template(spec: Any = None) -> ChatTemplate:
    """The template of a config value: None (the default preset), a preset name, or a mapping
    {preset?, <field>: str, ...} overriding a preset's fields."""
    if spec is None or spec == "":
        return PRESETS[DEFAULT_PRESET]
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"chat_template={spec!r} is not a preset; use one of "
                             f"{sorted(PRESETS)} or a dict of template fields")
        return PRESETS[spec]
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ValueError(f"chat_template must be a preset name or a dict, got "
                         f"{type(spec).__name__}")
    fields = dict(spec)
    base = chat_template(fields.pop("preset", None))
    names = {f.name for f in dataclasses.fields(ChatTemplate)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"chat_template: unknown field(s) {unknown}; allowed: "
                         f"{sorted(names | {'preset'})}")
    bad = [k for k, v in fields.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"chat_template.{bad[0]} must be a string, got {fields[bad[0]]!r}")
    return dataclasses.replace(base, **fields)


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """{"name", "arguments"} of a call given as such or in OpenAI form {"function": {...}}."""
    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
        call = call["function"]
    if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
        raise ValueError(f"{where}: a tool call needs a string 'name' (and 'arguments'), got "
                         f"{call!r}")
    arguments = call.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}: tool call arguments must be a JSON object, got "
                         f"{arguments!r}; decode argument strings before rendering")
    return {"name": call["name"], "arguments": dict(arguments)}


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}]: role must be one of {ROLES}, got "
                             f"{m.get('role') if isinstance(m, Mapping) else m!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or null")
        if m["role"] == "system" and i:
            raise ValueError(f"messages[{i}]: a system turn may only come first")
        if m.get("tool_calls") and m["role"] != "assistant":
            raise ValueError(f"messages[{i}]: only assistant turns carry tool_calls")
    return list(messages)


def render_segments(template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Any] | None = None, *, add_generation_prompt: bool = False
                    ) -> list[tuple[str, bool]]:
    """(text, trained) segments of a conversation; trained = assistant content, tool calls and
    the assistant's end of turn. Consecutive untrained pieces are merged."""
    t = template
    messages = _check_messages(messages)
    segments: list[tuple[str, bool]] = []

    def add(text: str, trained: bool) -> None:
        if segments and segments[-1][1] == trained:
            segments[-1] = (segments[-1][0] + text, trained)
        elif text:
            segments.append((text, trained))

    system = messages[0].get("content") or "" if messages[0]["role"] == "system" else None
    if tools:
        head = (system + "\n") if system else ""
        system = head + t.tools_intro + "".join(
            "\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    if system is not None:
        add(t.system_start + system + t.end_of_turn, False)
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            continue
        if role != "assistant":
            add((t.user_start if role == "user" else t.tool_start) + content + t.end_of_turn,
                False)
            continue
        calls = [_tool_call(c, f"messages[{i}]") for c in m.get("tool_calls") or ()]
        add(t.assistant_start, False)
        add(content + "".join(t.tool_call_start + json.dumps(c, ensure_ascii=False)
                              + t.tool_call_end for c in calls) + t.end_of_turn, True)
    if add_generation_prompt:
        add(t.assistant_start, False)
    return segments


def render_text(template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                tools: Sequence[Any] | None = None, *, add_generation_prompt: bool = False) -> str:
    """The whole rendered conversation as one string."""
    return "".join(s for s, _ in render_segments(template, messages, tools,
                                                add_generation_prompt=add_generation_prompt))


def _lit(text: str) -> str:
    """A Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text)


def jinja_template(template: ChatTemplate) -> str:
    """The template as a Jinja string for tokenizer_config.json's `chat_template` (HF's
    apply_chat_template variables: messages, tools, add_generation_prompt)."""
    t = {f.name: _lit(getattr(template, f.name)) for f in dataclasses.fields(ChatTemplate)}
    return (
        "{%- set ns = namespace(system=none) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = messages[0]['content'] or '' -%}{%- endif -%}"
        "{%- if tools -%}"
        "{%- set ns.system = ((ns.system ~ '\\n') if ns.system else '') ~ " + t["tools_intro"]
        + " -%}{%- for tool in tools -%}{%- set ns.system = ns.system ~ '\\n' ~ (tool | tojson)"
        " -%}{%- endfor -%}{%- endif -%}"
        "{%- if ns.system is not none -%}{{ " + t["system_start"] + " ~ ns.system ~ "
        + t["end_of_turn"] + " }}{%- endif -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' -%}{{ " + t["user_start"] + " ~ (m['content'] or '') ~ "
        + t["end_of_turn"] + " }}"
        "{%- elif m['role'] == 'tool' -%}{{ " + t["tool_start"] + " ~ (m['content'] or '') ~ "
        + t["end_of_turn"] + " }}"
        "{%- elif m['role'] == 'assistant' -%}{{ " + t["assistant_start"]
        + " ~ (m['content'] or '') }}"
        "{%- for c in (m['tool_calls'] or []) -%}"
        "{%- set f = c['function'] if c['function'] is defined else c -%}"
        "{{ " + t["tool_call_start"] + " ~ ({'name': f['name'], 'arguments': f['arguments']}"
        " | tojson) ~ " + t["tool_call_end"] + " }}"
        "{%- endfor -%}{{ " + t["end_of_turn"] + " }}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ " + t["assistant_start"] + " }}{%- endif -%}")


def jinja_chat_template(tokenizer_cfg: Any) -> str:
    """The Jinja chat template of an experiment's tokenizer config (its `chat_template` field):
    what HF export writes into tokenizer_config.json."""
    spec = tokenizer_cfg.get("chat_template", None) if tokenizer_cfg is not None else None
    return jinja_template(chat_template(spec))
