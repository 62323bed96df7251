"""FP8 numerics monitor: underflow/cosine against float64 NumPy, and the captured operands against
the model's own FP8 weight gradients (dW = Q(x)^T Q(dy) proves x and dy are the GEMM's operands)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.config import get_preset
from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.train import fp8_monitor
from pallas_kernels import reference as ref


def _np_stats(x: np.ndarray, tiling: str) -> dict[str, float]:
    """float64 underflow (over non-zeros) and cosine of x's E4M3 reconstruction."""
    if tiling == "rows":
        q, s = ref.np_quantize_rows(x)
        recon = ref.np_dequantize_rows(q, s)
    elif tiling == "cols":
        q, s = ref.np_quantize_rows(x.T)
        q, recon = q.T, ref.np_dequantize_rows(q, s).T
    else:
        q, s = ref.np_quantize_blocks(x)
        recon = ref.np_dequantize_blocks(q, s)
    x64 = np.asarray(x, np.float64)
    nonzero = x64 != 0
    cosine = np.sum(x64 * recon) / (np.linalg.norm(x64) * np.linalg.norm(recon))
    return {"underflow": np.sum(nonzero & (q == 0)) / np.sum(nonzero), "cosine": cosine}


@pytest.mark.parametrize("tiling", ["rows", "cols", "blocks"])
def test_stats_match_float64(tiling):
    """Wide dynamic range inside tiles: small entries next to large ones flush to zero."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 300)) * np.exp(rng.uniform(-12, 2, (200, 300)))
    x[rng.random(x.shape) < 0.1] = 0.0  # exact zeros are not underflow
    x = x.astype(np.float32)
    got = jax.jit(fp8_monitor.quantization_stats, static_argnums=1)(jnp.asarray(x), tiling)
    want = _np_stats(x, tiling)
    assert 0.01 < want["underflow"] < 0.5  # the data really exercises underflow
    np.testing.assert_allclose(float(got["underflow"]), want["underflow"], rtol=1e-6)
    np.testing.assert_allclose(float(got["cosine"]), want["cosine"], rtol=1e-6)


def test_zero_tensor_and_bad_tiling():
    stats = fp8_monitor.quantization_stats(jnp.zeros((4, 128)), "rows")
    assert (float(stats["underflow"]), float(stats["cosine"])) == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown tiling 'diag'"):
        fp8_monitor.quantization_stats(jnp.ones((4, 4)), "diag")


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny")
    cfg.update(dict(num_hidden_layers=2, vocab_size=256))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(1))
    _, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 256, (2, 24)).astype(np.int32)
    batch = dict(inputs=ids, targets=rng.integers(0, 256, (2, 24)).astype(np.int32),
                 positions=np.tile(np.arange(24, dtype=np.int32), (2, 1)),
                 segment_ids=np.ones((2, 24), np.int32),
                 loss_mask=(rng.random((2, 24)) < 0.9).astype(np.float32))  # fmt: skip
    return cfg, params.to_pure_dict(), biases.to_pure_dict(), jax.tree.map(jnp.asarray, batch)


# (op name, path of its weight in params, layer index in a stacked weight or None)
CHECKED_OPS = [
    ("layer0/attn_q", ("dense_layers", "attn", "q_proj"), 0),
    ("layer0/mlp_down", ("dense_layers", "mlp", "down_proj"), 0),
    ("layer1/attn_o", ("moe_layers", "attn", "o_proj"), 0),
    ("layer1/shared_up", ("moe_layers", "mlp", "shared", "up_proj"), 0),
    ("mtp0/attn_v", ("mtp_layers", 0, "block", "attn", "v_proj"), None),
]


def test_captured_operands_give_the_model_weight_gradients(setup):
    cfg, params, biases, batch = setup
    names, capture = fp8_monitor.make_capture(cfg)
    assert len(names) == 7 + 7 + 7  # dense: qkvo + 3 MLP; MoE layer and MTP block: qkvo + 3 shared
    _, seen, dys = jax.jit(capture)(params, biases, batch)
    # The model's own gradients, through the FP8 custom_vjp (same monitored config and loss).
    mcfg = fp8_monitor.monitor_config(cfg)
    graphdef = nnx.split(nnx.eval_shape(lambda: LingForCausalLM(mcfg, rngs=nnx.Rngs(0))),
                         nnx.Param, ExpertBias)[0]  # fmt: skip
    loss = lambda p: fp8_monitor.monitored_loss(nnx.merge(graphdef, p, biases), batch, 0.1)
    grads = jax.jit(jax.grad(loss))(params)
    for name, path, index in CHECKED_OPS:
        i = names.index(name)
        x, dy = np.asarray(seen[i][0]), np.asarray(dys[i])
        assert np.abs(dy).max() > 0
        # dW GEMM of the recipe: x and dy in 128-row tiles along M (tokens).
        x_t = ref.np_dequantize_rows(*ref.np_quantize_rows(x.T))
        dy_t = ref.np_dequantize_rows(*ref.np_quantize_rows(dy.T))
        g = grads
        for key in path:
            g = g[key]
        g = np.asarray(g if index is None else g[index]).reshape(x.shape[1], -1)
        np.testing.assert_allclose(g, x_t @ dy_t.T, rtol=1e-4, atol=1e-6 * np.abs(g).max())


def test_monitor_reports_every_op(setup):
    cfg, params, biases, batch = setup
    stats = fp8_monitor.make_fp8_monitor(cfg)(params, biases, batch)
    for name in fp8_monitor.linear_op_names(cfg):
        for operand in ("x", "w", "dy", "x_t", "dy_t"):
            assert 0.999 < stats[f"fp8/{name}/{operand}/cosine"] <= 1.0 + 1e-6
            assert 0.0 <= stats[f"fp8/{name}/{operand}/underflow"] < 0.01
    assert "fp8/layer1/experts_gate/w/cosine" in stats and "fp8/mtp0/experts_down/w/cosine" in stats
    worst = min(v for k, v in stats.items() if k.endswith("/dy/cosine"))
    assert stats["fp8/min_cosine/dy"] == worst


def test_monitor_due():
    assert [s for s in range(1, 11) if fp8_monitor.monitor_due(s, 5)] == [5, 10]
    assert not fp8_monitor.monitor_due(5, 0)
