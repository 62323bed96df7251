"""Sizes bounded before anything is allocated: parameter bytes computed from the config, lengths
against max_position_embeddings, max_new_tokens; one line each. (New APIs are imported inside the
tests, so that each test fails on its own against code that lacks them.)"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ling_jax.config import presets
from ling_jax.data.tokenizers import train_bpe
from ling_jax.interop.model_checkpoint import MODEL_CONFIG_FILE, config_to_json
from ling_jax.model.param_count import count_params
from tests.reliability.hostile import assert_message_one_line, assert_one_line, cli
from tests.rl.rl_fixtures import small_model_config


@pytest.mark.parametrize("name", ["tiny", "bench_mini", "ling_mini_2", "ling_flash_2"])
def test_parameter_count_from_numbers_matches_the_model(name):
    """A lower bound within 0.1% of the abstract model's count (norm scales left out)."""
    from ling_jax.config.budget import parameter_count

    cfg = presets.get_preset(name)
    counts = count_params(cfg)
    reference = counts.total + counts.mtp_total
    estimate = parameter_count(cfg)
    assert 0.999 * reference <= estimate <= reference


def test_memory_check_is_exact_at_the_boundary():
    from ling_jax.config.budget import check_fits_in_memory, parameter_count

    cfg = presets.get_preset("tiny")
    nbytes = parameter_count(cfg) * np.dtype(cfg.param_dtype).itemsize
    check_fits_in_memory(cfg, memory=nbytes)
    with pytest.raises(ValueError) as info:
        check_fits_in_memory(cfg, memory=nbytes - 1)
    assert_message_one_line(str(info.value), f"{parameter_count(cfg):,} parameters")


def test_lengths_beyond_positions_are_refused():
    from ling_jax.cli.generate import check_lengths
    from ling_jax.config.budget import check_length

    cfg = small_model_config()
    limit = cfg.max_position_embeddings
    check_length(cfg, limit)
    check_length(cfg, limit - 5, 5)
    for prompt, new in ((limit + 1, 0), (limit - 5, 6), (3, 10**9)):
        with pytest.raises(ValueError) as info:
            check_length(cfg, prompt, new)
        assert_message_one_line(str(info.value), f"max_position_embeddings={limit}")
    with pytest.raises(ValueError) as info:
        check_lengths(cfg, [[1, 2, 3], [4]], 10**9)
    assert_message_one_line(str(info.value), "--max_new_tokens")


@pytest.fixture(scope="module")
def huge_hf(bailing_tiny_dir, tmp_path_factory):
    hf = tmp_path_factory.mktemp("huge") / "hf"
    hf.mkdir()
    shutil.copy(bailing_tiny_dir / "model.safetensors", hf)
    config = json.loads((bailing_tiny_dir / "config.json").read_text())
    config["num_experts"] = 1_000_000_000
    (hf / "config.json").write_text(json.dumps(config))
    return hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model checkpoint holding only its config (lengths must be refused before any state is
    read), with a tokenizer beside it."""
    root = tmp_path_factory.mktemp("model")
    train_bpe(["def add(a, b):\n    return a + b\n"] * 20, 256 + 3 + 20, root / "tokenizer.json",
              min_frequency=1)
    cfg = small_model_config()
    cfg.vocab_size = 320
    (root / "model").mkdir()
    (root / "model" / MODEL_CONFIG_FILE).write_text(config_to_json(cfg))
    return root / "model", cfg


def test_cli_refuses_huge_and_long_inputs_in_one_line(huge_hf, model_dir, tmp_path):
    model, cfg = model_dir
    long_tokens = tmp_path / "long.npy"
    np.save(long_tokens, np.ones(cfg.max_position_embeddings + 1, np.int32))
    commands = {
        "import-hf": (("import-hf", "--hf", huge_hf, "--out", tmp_path / "out"),
                      ["config.json", "num_experts=1000000000", "memory"]),
        "logits-hf": (("logits", "--hf", huge_hf, "--tokens", long_tokens, "--out", tmp_path / "a.npz"),
                      ["config.json", "num_experts=1000000000", "memory"]),
        "logits-long": (("logits", "--checkpoint", model, "--tokens", long_tokens,
                         "--out", tmp_path / "b.npz"), ["max_position_embeddings"]),
        "generate-long": (("generate", "--checkpoint", model, "--prompt", "def",
                           "--max_new_tokens", 10**9), ["max_position_embeddings", "--max_new_tokens"]),
    }
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(commands, pool.map(lambda c: cli(*c[0], timeout=120), commands.values()),
                           strict=True))
    assert time.monotonic() - start < 120
    for name, (_, needles) in commands.items():
        assert_one_line(results[name], *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("*.npz"))
