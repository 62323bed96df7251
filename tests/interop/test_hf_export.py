"""HF export: the imported fixture comes back key for key and bit for bit, in every dtype."""

import json
import math

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file

from ling_jax.interop import hf_export, hf_import
from tests.interop.hf_files import file_metadata, read_tensors, shard_files, stored_dtypes

# Upstream FP8 rules (reference §3), restated here independently of ling_jax.interop.fp8.
QUANTISED = ("attention.query_key_value.weight", "attention.dense.weight", "gate_proj.weight",
             "up_proj.weight", "down_proj.weight")


def is_pow2_key(key: str) -> bool:
    return key.endswith("attention.dense.weight") or (
        ".experts." in key and key.endswith(("gate_proj.weight", "up_proj.weight")))


def expand(scale: torch.Tensor, shape) -> torch.Tensor:
    return scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[: shape[0], : shape[1]]


def block_amax(w: torch.Tensor) -> torch.Tensor:
    rows, cols = math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128)
    padded = torch.zeros(rows * 128, cols * 128, dtype=w.dtype)
    padded[: w.shape[0], : w.shape[1]] = w.abs()
    return padded.reshape(rows, 128, cols, 128).amax(dim=(1, 3))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])


def assert_same_state(model_a, model_b):
    """Same leaves, dtypes and bits (the fixture model has 50 leaves)."""
    a, b = nnx.state(model_a).to_pure_dict(), nnx.state(model_b).to_pure_dict()
    assert jax.tree.structure(a) == jax.tree.structure(b)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == 50
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.fixture(scope="module")
def fixture_tensors(bailing_tiny_dir):
    return read_tensors(bailing_tiny_dir)


def test_fp32_export_reproduces_fixture_tensors(fp32_export, bailing_tiny_dir, fixture_tensors):
    assert sorted(p.name for p in fp32_export.iterdir()) == sorted(
        ["config.json", "model.safetensors", *hf_export.MODEL_CODE_FILES])
    ours = read_tensors(fp32_export)
    assert sorted(ours) == sorted(fixture_tensors)
    assert stored_dtypes(fp32_export) == stored_dtypes(bailing_tiny_dir)
    for key, ref in fixture_tensors.items():
        assert ours[key].shape == ref.shape, key
        assert torch.equal(bits(ours[key]), bits(ref)), key
    assert file_metadata(fp32_export / "model.safetensors") == {"format": "pt"}


def test_config_json_carries_fixture_keys(fp32_export, bailing_tiny_dir):
    ref = json.loads((bailing_tiny_dir / "config.json").read_text())
    ours = json.loads((fp32_export / "config.json").read_text())
    for key, value in ref.items():  # every fixture key describes the architecture or its dtype
        assert key in ours, key
        assert ours[key] == value, (key, ours[key], value)
    # Keys released checkpoints carry beyond the fixture (reference §1.1 converter key set).
    assert ours["moe_shared_expert_intermediate_size"] == 32
    assert ours["auto_map"]["AutoModelForCausalLM"].endswith("BailingMoeV2ForCausalLM")
    assert ours["routed_scaling_factor"] == 2.5 and ours["rotary_dim"] == 8


def test_export_import_export_is_bit_exact(fp32_export, imported, tmp_path):
    model, _ = imported
    again, cfg = hf_import.load_model(fp32_export)
    assert_same_state(model, again)
    hf_export.export_hf(again, cfg, tmp_path / "again", dtype="float32")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (fp32_export / name).read_bytes()


def test_bf16_export_rounds_fp32_values(imported, fixture_tensors, tmp_path):
    model, cfg = imported
    out = hf_export.export_hf(model, cfg, tmp_path / "bf16", dtype="bfloat16")
    ours, dtypes = read_tensors(out), stored_dtypes(out)
    assert sorted(ours) == sorted(fixture_tensors)
    for key, ref in fixture_tensors.items():
        if key.endswith("mlp.gate.expert_bias"):
            assert dtypes[key] == "F32" and torch.equal(ours[key], ref), key
        else:
            assert dtypes[key] == "BF16", key
            assert torch.equal(bits(ours[key]), bits(ref.to(torch.bfloat16))), key
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_sharded_export_loads_back_identically(imported, fixture_tensors, tmp_path):
    model, cfg = imported
    limit = 150_000
    out = hf_export.export_hf(model, cfg, tmp_path / "sharded", dtype="float32",
                              max_shard_bytes=limit)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    names = sorted(set(index["weight_map"].values()))
    n = len(names)
    assert n > 5 and names == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    assert sorted(index["weight_map"]) == sorted(fixture_tensors)
    total = 0
    for name in names:
        shard = load_file(out / name)
        nbytes = sum(t.numel() * t.element_size() for t in shard.values())
        assert nbytes <= limit or len(shard) == 1, name
        assert all(index["weight_map"][k] == name for k in shard)
        assert file_metadata(out / name) == {"format": "pt"}
        total += nbytes
    assert index["metadata"]["total_size"] == total
    again, _ = hf_import.load_model(out)
    assert_same_state(model, again)


def test_fp8_export_quantises_upstream_tensors(imported, fixture_tensors, tmp_path):
    model, cfg = imported
    limit = 100_000
    out = hf_export.export_hf(model, cfg, tmp_path / "fp8", dtype="fp8", max_shard_bytes=limit)
    for file in shard_files(out):  # the planner sizes FP8 weights + scales as written
        shard = load_file(file)
        nbytes = sum(t.numel() * t.element_size() for t in shard.values())
        assert nbytes <= limit or len({k.removesuffix("_scale_inv") for k in shard}) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3",
                                             "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]}
    ours, dtypes = read_tensors(out), stored_dtypes(out)
    quantised = [k for k in fixture_tensors if k.endswith(QUANTISED)]
    # attention (3 layers + MTP) x 2, dense MLP x 3, 3 MoE blocks x (16 experts + shared) x 3
    assert len(quantised) == 4 * 2 + 3 + 3 * (16 + 1) * 3
    assert sorted(ours) == sorted([*fixture_tensors, *(k + "_scale_inv" for k in quantised)])
    dequantised = {}
    for key, w in fixture_tensors.items():
        if key not in quantised:
            want = "F32" if key.endswith("expert_bias") else "BF16"
            assert dtypes[key] == want, key
            assert torch.equal(bits(ours[key]), bits(w.to(ours[key].dtype))), key
            dequantised[key] = ours[key].float()
            continue
        scale = ours[key + "_scale_inv"]
        assert dtypes[key] == "F8_E4M3" and dtypes[key + "_scale_inv"] == "F32", key
        assert scale.shape == (math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128)), key
        plain = block_amax(w).clamp_min(1e-4) / 448.0
        if is_pow2_key(key):
            assert torch.equal(scale, torch.exp2(torch.ceil(torch.log2(plain)))), key
        else:
            torch.testing.assert_close(scale, plain, rtol=1e-6, atol=0)
        deq = ours[key].double() * expand(scale.double(), w.shape)
        s = expand(scale.double(), w.shape)
        err = (deq - w.double()).abs()
        assert bool((err <= w.double().abs() * 2**-4 + s * 2**-10).all()), key  # E4M3 half-ulp
        dequantised[key] = deq.float()
    # Import dequantises exactly what the file holds.
    again, cfg_again = hf_import.load_model(out)
    back = read_tensors(hf_export.export_hf(again, cfg_again, tmp_path / "back", dtype="float32"))
    for key, value in dequantised.items():
        assert torch.equal(back[key], value), key


def test_tokenizer_side_files_are_kept(imported, tmp_path):
    """A tokenizer directory's own tokenizer_config / special_tokens_map / generation_config and
    *.model are exported as they are (a released Ling tokenizer keeps its chat template)."""
    from ling_jax.data.tokenizers import train_bpe

    model, cfg = imported
    tok = tmp_path / "tok"
    train_bpe(["a b c d e f"] * 10, 270, tok / "tokenizer.json", min_frequency=1)
    side = {"tokenizer_config.json": {"eos_token": "<|endoftext|>", "chat_template": "{{ x }}"},
            "special_tokens_map.json": {"eos_token": "<|endoftext|>"},
            "generation_config.json": {"eos_token_id": [0, 2]}}
    for name, value in side.items():
        (tok / name).write_text(json.dumps(value))
    (tok / "spm.model").write_bytes(b"\x00\x01")
    (tok / "notes.txt").write_text("not exported")
    out = hf_export.export_hf(model, cfg, tmp_path / "hf", dtype="bfloat16", tokenizer_dir=tok)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", *hf_export.MODEL_CODE_FILES, "tokenizer.json",
         *side, "spm.model"])
    assert json.loads((out / "tokenizer_config.json").read_text()) == {
        **side["tokenizer_config.json"], "bos_token": "<|startoftext|>", "pad_token": "<|pad|>"}
    for name in ("special_tokens_map.json", "generation_config.json"):
        assert json.loads((out / name).read_text()) == side[name]
    assert (out / "spm.model").read_bytes() == b"\x00\x01"
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (0, 1, 2)


def test_export_refuses_to_clobber_and_is_atomic(imported, tmp_path, monkeypatch):
    model, cfg = imported
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        hf_export.export_hf(model, cfg, out, dtype="bfloat16")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    calls = []

    def failing_write(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(path, tensors, metadata)

    real_write = hf_export.write_file
    monkeypatch.setattr(hf_export, "write_file", failing_write)
    for target, overwrite in ((tmp_path / "new", False), (out, True)):
        with pytest.raises(RuntimeError, match="disk full"):
            hf_export.export_hf(model, cfg, target, dtype="float32", max_shard_bytes=200_000,
                                overwrite=overwrite)
        calls.clear()
    assert not (tmp_path / "new").exists()
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old directory survived
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary leftovers
    monkeypatch.undo()
    hf_export.export_hf(model, cfg, out, dtype="bfloat16", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", *hf_export.MODEL_CODE_FILES])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="float16"), "dtype 'float16'"),
    (dict(max_shard_bytes=0), "max_shard_bytes"),
    (dict(tokenizer_dir="/nonexistent/tok"), "tokenizer directory"),
])
def test_export_rejects_bad_arguments(imported, tmp_path, kwargs, match):
    model, cfg = imported
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        hf_export.export_hf(model, cfg, tmp_path / "hf", **kwargs)
    assert list(tmp_path.iterdir()) == []
