"""Attention backends inside the model: upstream parity with `tiled`, tiled == reference with
partial RoPE + YaRN (logits and parameter gradients), and packed documents that never see each
other, from the packer's rows to attention, in every backend that runs on CPU."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ling_jax.config import get_preset
from ling_jax.data import DocumentEncoder, PackedIterDataset
from ling_jax.interop.hf_import import load_model
from ling_jax.model.transformer import LingForCausalLM

CPU_BACKENDS = ("reference", "tiled")
SMALL_TILES = dict(attention_block_q=8, attention_block_kv=4)  # several, ragged tiles at T ≤ 24


@nnx.jit
def _forward(model, ids, positions=None, segment_ids=None):
    return model(ids, positions, segment_ids)


def _tiny(backend, **overrides):
    cfg = get_preset("tiny")
    cfg.update(dict(num_hidden_layers=3, attention_backend=backend, **SMALL_TILES, **overrides))
    return LingForCausalLM(cfg, rngs=nnx.Rngs(3)), cfg  # same seed → same parameters


def test_tiled_matches_upstream_fixture(bailing_tiny_dir):
    ref = dict(np.load(bailing_tiny_dir / "reference.npz"))
    model, _ = load_model(bailing_tiny_dir, attention_backend="tiled", **SMALL_TILES)
    out = _forward(model, jnp.asarray(ref["input_ids"]))
    np.testing.assert_allclose(out.logits, ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.mtp_logits, ref["mtp_logits"], atol=1e-4, rtol=0)


def _loss_and_grads(model, ids, pos, seg):
    def loss(m):
        out = m(ids, pos, seg)
        return jnp.sum(out.logits * jnp.cos(jnp.arange(out.logits.shape[-1]))), out.logits

    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return logits, nnx.state(grads, nnx.Param).to_pure_dict()


def test_tiled_equals_reference_with_yarn_partial_rope():
    """Packed row + padded row, partial rotary 0.5, YaRN ×4: logits and every parameter gradient."""
    yarn = dict(rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=8),
                partial_rotary_factor=0.5)
    ids = jax.random.randint(jax.random.key(5), (2, 22), 0, 2048)
    seg = jnp.array([[1] * 9 + [2] * 13, [1] * 17 + [0] * 5])
    pos = jnp.array([list(range(9)) + list(range(13)), list(range(22))])
    runs = [_loss_and_grads(_tiny(b, **yarn)[0], ids, pos, seg) for b in CPU_BACKENDS]
    (ref_logits, ref_grads), (logits, grads) = runs
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5 * np.abs(ref_logits).max())
    flat_ref, flat = jax.tree.leaves(ref_grads), jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref) > 10
    for got, want in zip(flat, flat_ref, strict=True):
        rel = float(jnp.linalg.norm(got - want) / jnp.maximum(jnp.linalg.norm(want), 1e-30))
        assert rel < 1e-5, rel


def _packed_row(doc_a, doc_b, seq_len=24):
    records = [{"index": 0, "tokens": doc_a}, {"index": 1, "tokens": doc_b}]
    ds = grain.MapDataset.source(records).map(DocumentEncoder("unit", None, 2048, pad_id=0))
    row = next(iter(PackedIterDataset(ds.to_iter_dataset(), seq_len, source_name="unit")))
    return {k: jnp.asarray(row[k])[None] for k in ("inputs", "positions", "segment_ids")}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_documents_never_attend_across(backend):
    """Rows from the packer: changing document A leaves document B's logits unchanged; the same
    rows without their segment ids do change them (so the check can fail)."""
    model, _ = _tiny(backend)
    rng = np.random.default_rng(0)
    doc_b = rng.integers(2, 2048, size=11)
    rows = [_packed_row(rng.integers(2, 2048, size=9), doc_b) for _ in range(2)]
    assert np.asarray(rows[0]["segment_ids"]).max() == 2  # two documents in one row
    b_slice = np.asarray(rows[0]["segment_ids"][0]) == 2
    outs = [_forward(model, r["inputs"], r["positions"], r["segment_ids"]).logits[0, b_slice]
            for r in rows]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)
    unsegmented = [_forward(model, r["inputs"], r["positions"],
                            (r["segment_ids"] > 0).astype(jnp.int32)).logits[0, b_slice]
                   for r in rows]
    assert float(jnp.abs(unsegmented[0] - unsegmented[1]).max()) > 1e-3


def test_tiny_forward_at_32k_plans_under_a_gib_with_tiled():
    """XLA's buffer plan for the tiny model's forward at T = 32,768 (compiled, not run): one fp32
    [T, T] score matrix alone would be 4 GiB (the reference backend plans 33 GiB here)."""
    cfg = get_preset("tiny")
    cfg.update(dict(attention_backend="tiled", max_position_embeddings=32768))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0))))
    forward = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i).logits[:, -1])
    ids = jax.ShapeDtypeStruct((1, 32768), jnp.int32)
    memory = forward.lower(state, ids).compile().memory_analysis()
    assert memory.temp_size_in_bytes < 2**30, memory.temp_size_in_bytes
