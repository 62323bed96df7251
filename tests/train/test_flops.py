"""FLOPs per token against the reference's derived counts (§8.1, §8.2) and hand arithmetic."""

import json
import types

import jax
import pytest

from ling_jax.train.flops import (
    ModelDims,
    active_matmul_params,
    measure_cpu_peak_flops,
    mfu,
    model_dims,
    peak_flops_for_kind,
    peak_flops_per_device,
    training_flops_per_step,
    training_flops_per_token,
)

COMMON = dict(vocab_size=157184, head_dim=128, num_experts=256, num_experts_per_tok=8,
              num_shared_experts=1, num_nextn_predict_layers=1)  # fmt: skip
MODELS = {
    "mini": dict(COMMON, hidden_size=2048, num_hidden_layers=20, intermediate_size=5120,
                 moe_intermediate_size=512, moe_shared_expert_intermediate_size=512,
                 first_k_dense_replace=1, num_attention_heads=16, num_key_value_heads=4),
    "flash": dict(COMMON, hidden_size=4096, num_hidden_layers=32, intermediate_size=9216,
                  moe_intermediate_size=1024, moe_shared_expert_intermediate_size=1024,
                  first_k_dense_replace=1, num_attention_heads=32, num_key_value_heads=4),
    "1t": dict(COMMON, hidden_size=8192, num_hidden_layers=80, intermediate_size=18432,
               moe_intermediate_size=2048, moe_shared_expert_intermediate_size=2048,
               first_k_dense_replace=4, num_attention_heads=64, num_key_value_heads=8),
}  # fmt: skip
# Reference §8.1: activated non-embedding params (they include the norm weights, which are not
# matmuls: final norm H plus 2H + 2d per layer).
NON_EMB_ACTIVATED = {"mini": 789_142_528, "flash": 4_864_618_496, "1t": 48_479_105_024}
# Reference §8.2: forward GFLOP/token at 4K and 32K; MTP matmul params (B).
FWD_GFLOP_4K = {"mini": 2.56, "flash": 12.09, "1t": 104.9}
FWD_GFLOP_32K = {"mini": 4.91, "flash": 19.61, "1t": 142.5}
MTP_MATMUL_B = {"mini": 0.370, "flash": 0.829, "1t": 2.028}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matmul_params_match_reference_counts(name):
    cfg = MODELS[name]
    h, layers, d = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["head_dim"]
    norms = h + layers * (2 * h + 2 * d)
    want = NON_EMB_ACTIVATED[name] - norms + h * cfg["vocab_size"]  # + the LM head matmul
    parts = active_matmul_params(cfg)
    assert parts["total"] - parts["mtp"] == want
    assert parts["mtp"] / 1e9 == pytest.approx(MTP_MATMUL_B[name], abs=5e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_flops_match_reference_table(name):
    # Training = 3 × forward in MaxText's convention; the table is rounded to 3-4 digits.
    for seq, table in ((4096, FWD_GFLOP_4K), (32768, FWD_GFLOP_32K)):
        fwd = training_flops_per_token(MODELS[name], seq, include_mtp=False) / 3 / 1e9
        assert fwd == pytest.approx(table[name], rel=2e-3), (name, seq)


def test_tiny_fixture_config_by_hand():
    # bailing-tiny: V 512, H 64, 3 layers (1 dense), 4 heads / 2 kv of 16, dense I 128, 16 experts
    # top-4, m 32, 1 shared (no moe_shared_expert_intermediate_size key: width m·1), 1 MTP layer.
    attn = 64 * (4 + 2 * 2) * 16 + 4 * 16 * 64  # 8192 + 4096
    dense = 3 * 64 * 128
    moe = 64 * 16 + 3 * 64 * 32 * 4 + 3 * 64 * 32
    head = 64 * 512
    mtp = 2 * 64 * 64 + attn + moe + head
    n = 3 * attn + dense + 2 * moe + head + mtp
    cfg = types.SimpleNamespace(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
        num_experts=16, num_experts_per_tok=4, num_shared_experts=1, first_k_dense_replace=1,
        num_nextn_predict_layers=1,
    )  # fmt: skip
    seq = 24
    attention = 6 * (3 + 1) * 4 * 16 * seq
    assert training_flops_per_token(cfg, seq) == 6 * n + attention
    no_mtp = 6 * (n - mtp) + 6 * 3 * 4 * 16 * seq
    assert training_flops_per_token(cfg, seq, include_mtp=False) == no_mtp
    assert training_flops_per_step(cfg, seq, tokens=48) == 48 * (6 * n + attention)


def test_reads_the_fixture_config_json(bailing_tiny_dir):
    cfg = json.loads((bailing_tiny_dir / "config.json").read_text())
    dims = model_dims(cfg)
    assert dims.shared_expert_width == 32 and dims.num_dense_layers == 1
    assert training_flops_per_token(cfg, 24) > 0


def test_attention_term_is_linear_in_seq_len():
    cfg = MODELS["mini"]
    diff = training_flops_per_token(cfg, 8192) - training_flops_per_token(cfg, 4096)
    assert diff == 6 * (20 + 1) * 16 * 128 * 4096


def test_dense_model_matches_6n_plus_attention():
    # A dense GPT-like model with n_h·d = H: 6·N + 6·L·H·S, N = L·(4H² + 3HI) + HV.
    h, layers, inter, v, s = 256, 4, 1024, 1000, 128
    dims = ModelDims(vocab_size=v, hidden_size=h, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=4, head_dim=64,
                     intermediate_size=inter)  # fmt: skip
    n = layers * (4 * h * h + 3 * h * inter) + h * v
    assert training_flops_per_token(dims, s) == 6 * n + 6 * layers * h * s


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_experts_per_tok=300), "num_experts_per_tok"),
        (dict(first_k_dense_replace=30), "first_k_dense_replace"),
        (dict(head_dim=12.5), "head_dim"),
    ],
)
def test_bad_dims_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelDims(**{**MODELS["mini"], **kwargs})


def test_missing_field_is_named():
    cfg = dict(MODELS["mini"])
    del cfg["num_key_value_heads"]
    with pytest.raises(ValueError, match="num_key_value_heads"):
        training_flops_per_token(cfg, 4096)
    with pytest.raises(ValueError, match="seq_len"):
        training_flops_per_token(MODELS["mini"], 0)


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("TPU7x", 2307e12 / 2),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("TPU v9 imaginary", None),
        ("cpu", None),
    ],
)
def test_peak_table(kind, peak):
    assert peak_flops_for_kind(kind) == peak


def test_cpu_device_has_no_table_peak_but_a_measured_one():
    assert peak_flops_per_device(jax.devices("cpu")[0]) is None
    measured = measure_cpu_peak_flops(n=256, repeats=2)
    assert 1e8 < measured < 1e14  # a real number of FLOP/s for any CPU


def test_mfu_arithmetic():
    assert mfu(6e12, 2.0, 1e12, 4) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0, 1e12, 1)
