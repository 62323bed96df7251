"""Stacked decoder layers: created with nnx.vmap, applied with lax.scan (or unrolled for debugging).

Scanning makes Ling-1T's 76 MoE layers compile like one; remat policies wrap the scanned body.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from ling_jax.model.decoder import DecoderLayer
from ling_jax.model.logical import constrain
from ling_jax.ops import scan_bits

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    # Recompute everything (like "full"), but keep each layer's input in host memory instead of
    # HBM: at long context the per-layer inputs are the largest saved activations.
    "offload_layer_inputs": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"],
        offload_src="device", offload_dst="pinned_host"),
}


def make_stack(
    cfg, num_layers: int, *, use_moe: bool, dtype, param_dtype, rngs: nnx.Rngs
) -> DecoderLayer:
    """One DecoderLayer whose every variable has a leading `layers` axis of size num_layers."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(layer_rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(
            cfg, use_moe=use_moe, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs
        )

    return create(rngs)


def apply_stack(
    stack: DecoderLayer,
    x_BTD,
    cos,
    sin,
    mask,
    token_mask,
    *,
    num_layers: int,
    scan: bool,
    remat_policy: str,
    frozen: bool = False,
):
    """Run the layers in order; returns (x, stacked per-layer aux or None).

    frozen: no gradient flows through the layers (inference), so a scan reads bf16 weights as
    raw bits (`ops.scan_bits`: XLA:CPU would convert the whole stack to f32 per call) and MoE
    layers pick their inference backend (`MoE.inference_backend`).
    """
    graphdef, state = nnx.split(stack)
    dtypes = scan_bits.dtypes_of(state) if frozen and scan else None
    if dtypes is not None:
        state = scan_bits.to_bits(state)

    def body(x, layer_state):
        if dtypes is not None:
            layer_state = scan_bits.from_bits(layer_state, dtypes)
        layer = nnx.merge(graphdef, layer_state)
        x = checkpoint_name(x, "layer_input")  # the residual "offload_layer_inputs" moves to host
        x, aux = layer(x, cos, sin, mask, token_mask, inference=frozen)
        return constrain(x, ("batch", "seq", "embed")), aux

    if remat_policy != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan)
    if scan:
        return jax.lax.scan(body, x_BTD, state)
    auxes = []
    for i in range(num_layers):
        x_BTD, aux = body(x_BTD, jax.tree.map(functools.partial(_index, i=i), state))
        auxes.append(aux)
    if auxes[0] is None:
        return x_BTD, None
    return x_BTD, jax.tree.map(lambda *a: jnp.stack(a), *auxes)


def _index(a, i):
    return a[i]
