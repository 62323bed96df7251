"""Parity of the JAX model with the upstream fixture and with an independent float64 NumPy forward."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from ling_jax.config import get_preset
from ling_jax.interop.hf_import import load_model
from ling_jax.model.transformer import LingForCausalLM
from tests.model.numpy_reference import forward as numpy_forward
from tests.model.numpy_reference import route as numpy_route


@pytest.fixture(scope="module")
def fixture(bailing_tiny_dir):
    ref = dict(np.load(bailing_tiny_dir / "reference.npz"))
    weights = load_file(bailing_tiny_dir / "model.safetensors")
    config = json.loads((bailing_tiny_dir / "config.json").read_text())
    return bailing_tiny_dir, ref, weights, config


@pytest.fixture(scope="module")
def outputs(fixture):
    path, ref, _, _ = fixture
    results = {}
    for backend in ("blocked", "dense", "ragged_dot"):
        model, _ = load_model(path, moe_backend=backend)
        results[backend] = nnx.jit(lambda m, ids: m(ids))(model, jnp.asarray(ref["input_ids"]))
    return results


@pytest.mark.parametrize("backend", ["blocked", "dense", "ragged_dot"])
def test_logits_match_upstream_fixture(outputs, fixture, backend):
    _, ref, _, _ = fixture
    out = outputs[backend]
    assert out.logits.dtype == jnp.float32
    np.testing.assert_allclose(out.logits, ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.mtp_logits, ref["mtp_logits"], atol=1e-4, rtol=0)


def test_numpy_reference_matches_fixture(fixture):
    """The float64 NumPy forward used below is itself checked against upstream."""
    _, ref, weights, config = fixture
    logits, mtp, _ = numpy_forward(weights, ref["input_ids"][1], config)
    np.testing.assert_allclose(logits, ref["logits"][1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mtp, ref["mtp_logits"][:, 1], atol=1e-5, rtol=0)


def test_every_routing_decision_matches(outputs, fixture):
    """Per token and MoE layer (MTP included): the same expert set as the float64 reference."""
    _, ref, weights, config = fixture
    out = outputs["blocked"]
    num_moe = config["num_hidden_layers"] - config["first_k_dense_replace"]
    biases = [
        weights[f"model.layers.{config['first_k_dense_replace'] + i}.mlp.gate.expert_bias"]
        for i in range(num_moe + config["num_nextn_predict_layers"])
    ]
    total_counts = np.zeros(np.asarray(out.expert_counts).shape, np.int64)
    for b in range(ref["input_ids"].shape[0]):
        _, _, routing = numpy_forward(weights, ref["input_ids"][b], config)
        assert len(routing) == len(biases)
        for layer, ref_idx in enumerate(routing):
            ours, _ = numpy_route(
                np.asarray(out.router_logits[layer, b], np.float64), biases[layer], config
            )
            np.testing.assert_array_equal(np.sort(ours, -1), np.sort(ref_idx, -1))
            total_counts[layer] += np.bincount(ref_idx.ravel(), minlength=config["num_experts"])
    np.testing.assert_array_equal(np.asarray(out.expert_counts), total_counts)


@nnx.jit
def _forward(model, ids, positions=None, segment_ids=None):
    return model(ids, positions, segment_ids)


def _tiny(**overrides):
    cfg = get_preset("tiny")
    cfg.num_hidden_layers = 3
    cfg.update(overrides)
    return LingForCausalLM(cfg, rngs=nnx.Rngs(3)), cfg  # same seed → same parameters


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


def test_scan_equals_unrolled(tiny_model):
    model, cfg = tiny_model
    ids = jax.random.randint(jax.random.key(0), (2, 12), 0, cfg.vocab_size)
    unrolled, _ = _tiny(scan_layers=False, remat_policy="full")
    a, b = _forward(model, ids), _forward(unrolled, ids)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    np.testing.assert_allclose(a.mtp_logits, b.mtp_logits, atol=1e-5)
    np.testing.assert_array_equal(a.expert_counts, b.expert_counts)


def test_packed_documents_do_not_leak(tiny_model):
    """A token of document 2 gets the same logits whatever document 1 holds, and alone."""
    model, cfg = tiny_model
    key1, key2, key3 = jax.random.split(jax.random.key(1), 3)
    doc2 = jax.random.randint(key3, (7,), 0, cfg.vocab_size)
    outs = []
    for key in (key1, key2):
        doc1 = jax.random.randint(key, (5,), 0, cfg.vocab_size)
        ids = jnp.concatenate([doc1, doc2])[None]
        seg = jnp.array([[1] * 5 + [2] * 7])
        pos = jnp.array([list(range(5)) + list(range(7))])
        outs.append(_forward(model, ids, pos, seg).logits[0, 5:])
    one_doc = (jnp.arange(7)[None], jnp.ones((1, 7), jnp.int32))
    alone = _forward(model, doc2[None, :], *one_doc).logits[0]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    np.testing.assert_allclose(outs[0], alone, atol=1e-5)


def test_padding_tokens_are_not_counted(tiny_model):
    model, cfg = tiny_model
    ids = jax.random.randint(jax.random.key(2), (1, 10), 0, cfg.vocab_size)
    pos = jnp.arange(10)[None]
    out = _forward(model, ids, pos, jnp.array([[1] * 6 + [0] * 4]))
    per_layer = np.asarray(out.expert_counts).sum(-1)
    np.testing.assert_array_equal(per_layer, 6 * cfg.num_experts_per_tok)


def test_bfloat16_compute_tracks_float32(tiny_model):
    """bf16 activations with fp32 params: logits close to fp32 (bf16 has ~3 significant digits)."""
    model, cfg = tiny_model
    ids = jax.random.randint(jax.random.key(4), (2, 12), 0, cfg.vocab_size)
    bf16, _ = _tiny(dtype="bfloat16")
    ref, low = np.asarray(_forward(model, ids).logits), np.asarray(_forward(bf16, ids).logits)
    assert low.dtype == np.float32
    rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    assert rel < 3e-2, rel


def test_bfloat16_params_are_stored_in_bfloat16():
    model, _ = _tiny(dtype="bfloat16", param_dtype="bfloat16")
    params = nnx.state(model, nnx.Param).to_pure_dict()
    assert params["moe_layers"]["mlp"]["gate_proj"].dtype == jnp.bfloat16
    # The router and the balancing bias stay fp32 (reference §2.7).
    assert params["moe_layers"]["mlp"]["router"].dtype == jnp.float32
    assert nnx.state(model).to_pure_dict()["moe_layers"]["mlp"]["expert_bias"].dtype == jnp.float32


def test_frozen_forward_is_bitwise_the_plain_forward_in_bfloat16():
    """frozen=True scans bf16 weights as raw bits and runs the MoE's inference backend
    (`all_experts` at 24 tokens): outputs are bit-identical."""
    model, cfg = _tiny(dtype="bfloat16", param_dtype="bfloat16")
    ids = jax.random.randint(jax.random.key(5), (2, 12), 0, cfg.vocab_size)
    assert model.moe_layers.mlp.inference_backend(ids.size) == "all_experts"
    run = nnx.jit(lambda m, ids, frozen: m(ids, mtp=False, frozen=frozen), static_argnums=2)
    plain, frozen = run(model, ids, False), run(model, ids, True)
    np.testing.assert_array_equal(np.asarray(frozen.logits), np.asarray(plain.logits))
    np.testing.assert_array_equal(frozen.expert_counts, plain.expert_counts)
    hlo = jax.jit(lambda s, ids: nnx.merge(nnx.graphdef(model), s)(ids, mtp=False, frozen=True)
                  ).lower(nnx.state(model), ids).as_text()
    assert "bitcast_convert" in hlo  # the bits path ran (tiny's 3-layer stack is scanned)


def test_mtp_false_skips_mtp_and_keeps_logits(fixture):
    """mtp=False (inference, RL scoring) gives the fixture's logits and no MTP outputs."""
    path, ref, _, config = fixture
    model, _ = load_model(path)
    out = nnx.jit(lambda m, ids: m(ids, mtp=False))(model, jnp.asarray(ref["input_ids"]))
    np.testing.assert_allclose(out.logits, ref["logits"], atol=1e-4, rtol=0)
    n_moe = config["num_hidden_layers"] - config["first_k_dense_replace"]
    assert out.mtp_logits.shape[0] == 0 and out.expert_counts.shape[0] == n_moe
    assert out.router_logits.shape[0] == n_moe
