"""Ahead-of-time Mosaic compiles of gmm, tgmm and the custom_vjp gradient for TPU topologies,
from a CPU-only host, at Ling-1T expert shapes (hidden 8192, expert width 2048).

Needs only libtpu and JAX_PLATFORMS=cpu (set by tests/conftest.py): `get_topology_desc` loads
libtpu as a compiler, no TPU and no extra environment needed. libtpu logs warnings about
TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES because there is no TPU VM metadata; they are
harmless for AOT (setting TPU_SKIP_MDS_QUERY changes nothing). The experts are sharded over all
devices of the topology (expert parallelism): each shard gets every token and its own 32 experts,
selected with `group_offset = axis_index * 32`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import fp8_grouped_matmul, gmm, tgmm

pytestmark = [pytest.mark.tpu_backend, pytest.mark.slow]  # ~60 s of TPU compiles

# name -> get_topology_desc topology_name (tpu7x exposes its 2 TensorCores per chip as devices).
TOPOLOGIES = {"v5p": "v5p:2x2x1", "v6e": "v6e:2x2x1", "tpu7x": "tpu7x:2x2x1"}
TOKENS, HIDDEN, EXPERT_WIDTH, LOCAL_EXPERTS = 8192, 8192, 2048, 32
TILING = (256, 512, 512)
F8 = jnp.float8_e4m3fn


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def mesh(request) -> Mesh:
    topo = topologies.get_topology_desc(topology_name=TOPOLOGIES[request.param], platform="tpu")
    assert topo.devices[0].platform == "tpu"
    return Mesh(np.array(topo.devices), ("expert",), axis_types=(AxisType.Auto,))


def _abstract(mesh: Mesh, spec: P, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _expert_parallel(mesh: Mesh, body, in_specs, out_specs):
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


def _shard_offset() -> jax.Array:
    return (jax.lax.axis_index("expert") * LOCAL_EXPERTS).astype(jnp.int32)


def _compile(fn, *args) -> str:
    """Lower and compile for the topology; returns the lowered StableHLO text.

    (The compiled module's `as_text()` is not used: with a psum in the program, libtpu's HLO
    proto does not round-trip through this jaxlib's parser, an XLA version skew.)"""
    lowered = fn.lower(*args)
    text = lowered.as_text()
    assert "tpu_custom_call" in text  # the kernels lowered through Mosaic
    lowered.compile()  # runs the Mosaic and XLA TPU compilers
    return text


def test_gmm_compiles(mesh):
    num_total = LOCAL_EXPERTS * mesh.size
    kb, nb = HIDDEN // 128, EXPERT_WIDTH // 128

    def body(x_q, x_s, w_q, w_s, sizes):
        return gmm(x_q, x_s, w_q, w_s, sizes, tiling=TILING, group_offset=_shard_offset())

    fn = _expert_parallel(mesh, body, (P(), P(), P("expert"), P("expert"), P()), P("expert"))
    _compile(
        fn,
        _abstract(mesh, P(), (TOKENS, HIDDEN), F8),
        _abstract(mesh, P(), (TOKENS, kb), jnp.float32),
        _abstract(mesh, P("expert"), (num_total, HIDDEN, EXPERT_WIDTH), F8),
        _abstract(mesh, P("expert"), (num_total, kb, nb), jnp.float32),
        _abstract(mesh, P(), (num_total,), jnp.int32),
    )


def test_tgmm_compiles(mesh):
    num_total = LOCAL_EXPERTS * mesh.size
    mb = TOKENS // 128

    def body(x_t_q, x_t_s, dy_q, dy_s, sizes):
        return tgmm(
            x_t_q, x_t_s, dy_q, dy_s, sizes, num_groups=LOCAL_EXPERTS, tiling=TILING,
            out_dtype=jnp.bfloat16, group_offset=_shard_offset(),
        )  # fmt: skip

    fn = _expert_parallel(mesh, body, (P(),) * 5, P("expert"))
    _compile(
        fn,
        _abstract(mesh, P(), (HIDDEN, TOKENS), F8),
        _abstract(mesh, P(), (HIDDEN, mb), jnp.float32),
        _abstract(mesh, P(), (TOKENS, EXPERT_WIDTH), F8),
        _abstract(mesh, P(), (mb, EXPERT_WIDTH), jnp.float32),
        _abstract(mesh, P(), (num_total,), jnp.int32),
    )


def test_custom_vjp_gradient_compiles(mesh):
    num_total = LOCAL_EXPERTS * mesh.size

    def loss(x, w, sizes):
        y = fp8_grouped_matmul(x, w, sizes, tiling=TILING, group_offset=_shard_offset())
        return jnp.sum(y.astype(jnp.float32) ** 2)

    body = functools.partial(jax.grad(loss, argnums=(0, 1)))
    fn = _expert_parallel(mesh, body, (P(), P("expert"), P()), (P("expert"), P("expert")))
    hlo = _compile(
        fn,
        _abstract(mesh, P(), (TOKENS, HIDDEN), jnp.bfloat16),
        _abstract(mesh, P("expert"), (num_total, HIDDEN, EXPERT_WIDTH), jnp.bfloat16),
        _abstract(mesh, P(), (num_total,), jnp.int32),
    )
    assert hlo.count("tpu_custom_call") >= 3  # forward gmm, dX gmm, dW tgmm
