"""`ling-jax generate --chat`: the prompt is rendered with the chat template as the sft phase
renders it (same ids), the reply is the library's greedy continuation; bad chat flags fail fast."""

import json

import jax

from ling_jax.data.chat_encoding import encode_prompt, stop_ids
from ling_jax.data.chat_template import chat_template
from ling_jax.model.decode import SamplingParams, generate_text_ids
from tests.cli.test_generate import cli, saved  # noqa: F401  (the fixture)

TOOLS = [{"name": "add", "parameters": {"a": "integer", "b": "integer"}}]


def test_chat_generation_renders_the_template(saved, tmp_path):  # noqa: F811
    root, model, tokenizer = saved
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    # A run's chat_template.json beside the checkpoint is found without --chat_template.
    (root / "chat_template.json").write_text(json.dumps({"preset": "compact",
                                                         "user_start": "Q: "}))
    result = cli("--checkpoint", root / "model", "--chat", "--prompt", "def add(a, b):",
                 "--system", "x = 1", "--tools", tools, "--max_new_tokens", 5)
    assert result.returncode == 0, result.stderr
    template = chat_template({"preset": "compact", "user_start": "Q: "})
    messages = [{"role": "system", "content": "x = 1"},
                {"role": "user", "content": "def add(a, b):"}]
    prompt = encode_prompt(tokenizer, template, messages, TOOLS)
    sampling = SamplingParams(temperature=0.0, stop_ids=stop_ids(tokenizer, template),
                              pad_id=tokenizer.pad_id)
    ids = generate_text_ids(model, [prompt], jax.random.key(0), max_new_tokens=5,
                            sampling=sampling)[0]
    reply = tokenizer.decode(ids).split(template.end_of_turn.strip())[0]
    assert result.stdout.startswith(f"user: def add(a, b):\nassistant: {reply}\n")


def test_chat_flags_fail_before_loading(saved):  # noqa: F811
    root, _, _ = saved
    result = cli("--checkpoint", root / "model", "--prompt", "x", "--tools", root / "nope.json")
    assert result.returncode != 0 and "need --chat" in result.stderr
    result = cli("--checkpoint", root / "model", "--prompt", "x", "--chat",
                 "--chat_template", "chatml")
    assert result.returncode != 0 and "chat_template='chatml' is not a preset" in result.stderr
