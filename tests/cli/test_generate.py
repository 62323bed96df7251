"""`ling-jax generate` end to end: a saved random model + its tokenizer, greedy and bad input."""

import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from ling_jax.data.tokenizers import train_bpe
from ling_jax.interop.model_checkpoint import save_model
from ling_jax.model.decode import SamplingParams, generate_text_ids
from ling_jax.model.transformer import LingForCausalLM
from tests.rl.rl_fixtures import small_model_config

ENTRY = "from ling_jax.cli.main import run; run()"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "XLA_FLAGS": ""}
PROMPT = "def add(a, b):"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, "generate", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    texts = ["def add(a, b):\n    return a + b\n", "x = 1\ny = 2\n"] * 20
    tokenizer = train_bpe(texts, 256 + 3 + 20, root / "tokenizer.json", min_frequency=1)
    cfg = small_model_config()
    cfg.vocab_size = 320  # >= the tokenizer's 279 ids
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(5))
    save_model(root / "model", model, cfg)
    return root, model, tokenizer


def test_greedy_generation_matches_the_library(saved):
    root, model, tokenizer = saved
    result = cli("--checkpoint", root / "model", "--prompt", PROMPT, "--max_new_tokens", 6)
    assert result.returncode == 0, result.stderr
    sampling = SamplingParams(temperature=0.0, stop_ids=(tokenizer.eos_id,),
                              pad_id=tokenizer.pad_id)
    ids = generate_text_ids(model, [tokenizer.encode(PROMPT)], jax.random.key(0),
                            max_new_tokens=6, sampling=sampling)[0]
    assert result.stdout.splitlines()[0] == (PROMPT + tokenizer.decode(ids)).splitlines()[0]
    assert result.stdout.startswith(PROMPT + tokenizer.decode(ids))
    tiled = cli("--checkpoint", root / "model", "--prompt", PROMPT, "--max_new_tokens", 6,
                "--attention_backend", "tiled")
    assert tiled.returncode == 0, tiled.stderr
    assert tiled.stdout == result.stdout


def test_bad_inputs_exit_with_one_line(saved, tmp_path):
    root, _, _ = saved
    cases = [
        (("--prompt", "x"), "exactly one of --hf"),
        (("--checkpoint", tmp_path / "missing", "--prompt", "x"), "not found"),
        (("--checkpoint", root / "model", "--prompt", "x", "--top_p", "0"), "top_p"),
        (("--checkpoint", root / "model", "--prompt", "x", "--attention_backend", "flash"),
         "model.attention_backend: 'flash' is not one of"),
    ]
    for args, needle in cases:
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and lines[-1].startswith("ling-jax: error: "), result.stderr
        assert needle in lines[-1]
