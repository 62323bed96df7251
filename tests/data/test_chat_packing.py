"""Conversations through the grain pipeline: packed whole, each its own segment, trained only on
assistant tokens, and the model never attends across them (packed logits = logits alone)."""

import json
import random

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.config import get_preset
from ling_jax.data.chat_encoding import encode_conversation
from ling_jax.data.chat_template import chat_template
from ling_jax.data.pipeline import make_pipeline
from ling_jax.data.tool_calls import ToolCallSource
from ling_jax.model.transformer import LingForCausalLM
from tests.data.test_chat_template import random_conversation

T, B = 384, 2


@pytest.fixture(scope="module")
def packed(tokenizer, tmp_path_factory):
    """(one batch of a tool-call + chat_jsonl mixture, the jsonl's directory)."""
    tmp_path = tmp_path_factory.mktemp("chat")
    rng = random.Random(0)
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(random_conversation(rng)) + "\n" for _ in range(30)))
    data = {"sources": {"tools": {"kind": "builtin_tool_calls", "num_docs": 50, "num_tools": 1},
                        "chat": {"kind": "chat_jsonl", "path": str(path)}},
            "long_docs": "error", "chat_template": "compact"}
    return next(make_pipeline(data, seq_len=T, batch_size=B, tokenizer=tokenizer, seed=0)), tmp_path


def test_packed_conversations_are_whole_segments_trained_on_assistant_tokens(tokenizer, packed):
    batch, tmp_path = packed
    template = chat_template("compact")
    seen = 0
    for row in range(B):
        seg = batch["segment_ids"][row]
        assert seg.max() >= 2, "rows should hold several conversations"
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()
            np.testing.assert_array_equal(batch["positions"][row, where], np.arange(len(where)))
            ids = batch["inputs"][row, where]
            text = tokenizer.tok.decode(ids.tolist(), skip_special_tokens=False)
            assert text.startswith(("System: ", "User: ")), text[:30]
            # Re-encode the decoded conversation: the pipeline's mask is the encoder's.
            conv = _find_conversation(text, tokenizer, template, tmp_path)
            want_ids, trained = encode_conversation(tokenizer, template, conv)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(batch["loss_mask"][row, where][:-1], trained[1:])
            assert batch["loss_mask"][row, where][-1] == 0  # no target across the boundary
            np.testing.assert_array_equal(batch["targets"][row, where][:-1], ids[1:])
            seen += 1
        assert (batch["loss_mask"][row][seg == 0] == 0).all()
    assert seen >= 4


def _find_conversation(text, tokenizer, template, tmp_path):
    from ling_jax.data.chat_template import render_text

    candidates = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    candidates += [ToolCallSource(num_docs=50, num_tools=1)[i] for i in range(50)]
    for conv in candidates:
        if render_text(template, conv["messages"], conv.get("tools")) == text:
            return conv
    raise AssertionError(f"no source conversation renders to {text[:60]!r}")


def test_model_never_attends_across_packed_conversations(tokenizer, packed):
    batch, _ = packed
    cfg = get_preset("tiny")
    cfg.update(dict(hidden_size=64, num_hidden_layers=2, first_k_dense_replace=2,
                    intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                    head_dim=16, vocab_size=tokenizer.vocab_size, num_nextn_predict_layers=0))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    row, seg = 0, batch["segment_ids"][0]
    # One forward: the packed row, then each conversation alone at the start of its own row.
    inputs, positions, segments = [batch["inputs"][row]], [batch["positions"][row]], [seg]
    spans = [np.flatnonzero(seg == s) for s in range(1, seg.max() + 1)]
    for where in spans:
        n = len(where)
        inputs.append(np.r_[batch["inputs"][row, where], np.zeros(T - n, np.int32)])
        positions.append(np.r_[np.arange(n), np.zeros(T - n)].astype(np.int32))
        segments.append(np.r_[np.ones(n), np.zeros(T - n)].astype(np.int32))
    logits = nnx.jit(lambda m, x, p, s: m(x, p, s).logits)(
        model, *(jnp.asarray(np.stack(a)) for a in (inputs, positions, segments)))
    logits = np.asarray(logits)
    for k, where in enumerate(spans, start=1):
        np.testing.assert_allclose(logits[0, where], logits[k, :len(where)], atol=2e-5,
                                   rtol=2e-5)
