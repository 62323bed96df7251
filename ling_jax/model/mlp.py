"""SwiGLU feed-forward: the dense-layer MLP and the shared expert (reference §2.5)."""

from __future__ import annotations

import jax
from flax import nnx

from ling_jax.model.linear import param, project


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(
        self, hidden: int, width: int, *, std: float, dtype, param_dtype, rngs: nnx.Rngs,
        quant: str | None = None,
    ):  # fmt: skip
        self.dtype, self.quant = dtype, quant
        self.gate_proj = param(rngs, (hidden, width), ("embed", "mlp"), std=std, dtype=param_dtype)
        self.up_proj = param(rngs, (hidden, width), ("embed", "mlp"), std=std, dtype=param_dtype)
        self.down_proj = param(rngs, (width, hidden), ("mlp", "embed"), std=std, dtype=param_dtype)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        gate = project("btd,df->btf", x_BTD, self.gate_proj[...], self.dtype, self.quant)
        up = project("btd,df->btf", x_BTD, self.up_proj[...], self.dtype, self.quant)
        h = jax.nn.silu(gate) * up
        return project("btf,fd->btd", h, self.down_proj[...], self.dtype, self.quant)
