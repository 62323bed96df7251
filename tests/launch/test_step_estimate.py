"""Collective bytes from compiled HLO (loops multiplied out) and the step-time estimate."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from ling_jax.launch.chips import CHIPS, chip_for_kind
from ling_jax.launch.step_estimate import collective_bytes, estimate

# Async collectives inside a while loop nested in another (trip counts 3 × 4), iota groups; a
# ragged all-to-all inside a custom-call's called computation (as tpu7x compiles it).
_HLO = """HloModule m

%called.1 (p0: f32[64,1,128]) -> f32[64,1,128] {
  ROOT %r.3 = f32[64,1,128]{2,1,0:T(1,128)} ragged-all-to-all(%p0, %p1), replica_groups=[1,8]<=[8]
}

%inner (p: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {
  %p = (s32[], bf16[2,8]) parameter(0)
  %ag = (bf16[2,8]{1,0}, bf16[8,8]{1,0}) all-gather-start(%x), replica_groups=[2,4]<=[8], dimensions={0}
  %agd = bf16[8,8]{1,0} all-gather-done(%ag)
  %cp = (f32[16]{0}, f32[16]{0}, u32[], u32[]) collective-permute-start(%y), source_target_pairs={{0,1}}
}

%outer (p: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {
  %w = (s32[], bf16[2,8]) while(%p), body=%inner, backend_config={"known_trip_count":{"n":"4"}}
  %rs = f32[4]{0} reduce-scatter(%z), replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
}

ENTRY %main (a: f32[32]) -> f32[32] {
  %w2 = (s32[], bf16[2,8]) while(%t), body=%outer, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[32]{0} all-reduce(%a), replica_groups=[1,8]<=[8], to_apply=%add
  %a2a = bf16[8,4]{1,0} all-to-all(%b), replica_groups=[2,4]<=[8], dimensions={0}
  %cc = f32[64,1,128]{2,1,0} custom-call(%c), custom_call_target="x", called_computations={%called.1}
}
"""


def test_synthetic_hlo_counts_nested_loops_and_async_ops():
    got = collective_bytes(_HLO, 8)
    assert got["all-gather"]["count"] == 12  # 3 × 4
    assert got["all-gather"]["operand_bytes"] == 12 * 2 * 8 * 2  # the bf16[2,8] operand
    assert got["all-gather"]["wire_bytes"] == 12 * 32 * 3  # (n-1) × operand, n = 4
    assert got["collective-permute"]["wire_bytes"] == 12 * 64
    assert got["reduce-scatter"]["count"] == 3
    assert got["reduce-scatter"]["operand_bytes"] == 3 * 16 * 4  # result × n
    assert got["reduce-scatter"]["wire_bytes"] == pytest.approx(3 * 64 * 3 / 4)
    assert got["all-reduce"]["wire_bytes"] == pytest.approx(128 * 2 * 7 / 8)
    assert got["all-to-all"]["wire_bytes"] == pytest.approx(64 * 3 / 4)
    assert got["ragged-all-to-all"]["count"] == 1
    assert got["ragged-all-to-all"]["wire_bytes"] == pytest.approx(64 * 128 * 4 * 7 / 8)


def test_compiled_scan_of_psums_is_counted_per_iteration():
    mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)

    def body(x):
        y, _ = jax.lax.scan(lambda c, _: (jax.lax.psum(c, "b") * 0.5, None), x, None, length=5)
        return jax.lax.all_gather(y, "a", tiled=True)

    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("a", "b"), out_specs=P(None, "b"),
                               check_vma=False))
    hlo = fn.lower(jax.ShapeDtypeStruct((8, 64), jnp.float32)).compile().as_text()
    got = collective_bytes(hlo, 8)
    local = 4 * 16 * 4  # f32[4, 16] per device
    assert got["all-reduce"]["count"] == 5
    assert got["all-reduce"]["wire_bytes"] == pytest.approx(5 * local * 2 * 3 / 4)
    assert got["all-gather"]["wire_bytes"] == pytest.approx(local)  # (2 - 1) × operand


def test_estimate_uses_the_published_figures_per_device():
    v5p, tpu7x = chip_for_kind("TPU v5"), chip_for_kind("TPU7x")
    assert v5p is CHIPS["v5p"] and v5p.peak_bf16 == 459e12 and v5p.ici_bw == 1200e9
    assert tpu7x.devices_per_chip == 2 and tpu7x.per_device(tpu7x.hbm_bw) == 3690e9
    assert chip_for_kind("cpu") is None
    est = estimate(v5p, 459e12 * 2.0, 1200e9 * 0.5)  # 2 s of compute, 0.5 s of collectives
    assert est.compute_seconds == pytest.approx(2.0)
    assert est.collective_seconds == pytest.approx(0.5)
    assert est.step_seconds_bound == pytest.approx(2.0)
    assert est.step_seconds_serial == pytest.approx(2.5)
    assert est.mfu_bound == pytest.approx(1.0)
    slow = estimate(tpu7x, 1153.5e12, 600e9 * 4)  # per device: 1 s compute, 4 s ICI
    assert slow.mfu_bound == pytest.approx(0.25)


# libtpu's optimized HLO prints no known_trip_count: the loop bound comes from its condition.
_TPU_LOOP = """HloModule m

%cond.7 (wide.param: (s32[], bf16[2,8])) -> pred[] {
  %constant.1 = s32[]{:T(128)} constant(76)
  %wide.param = (s32[]{:T(128)}, bf16[2,8]{1,0}) parameter(0)
  %gte = s32[]{:T(128)} get-tuple-element(%wide.param), index=0
  ROOT %lt = pred[]{:T(512)} compare(%gte, %constant.1), direction=LT, backend_config={"flag_configs":[]}
}

%body.7 (wide.param.1: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {
  %ar = f32[32]{0} all-reduce(%a), replica_groups=[1,8]<=[8], to_apply=%add
}

ENTRY %main (a: f32[32]) -> f32[32] {
  %w = (s32[], bf16[2,8]{1,0}) while(%t), condition=%cond.7, body=%body.7, backend_config={}
}
"""


def test_loop_without_a_printed_trip_count_runs_its_condition_bound():
    got = collective_bytes(_TPU_LOOP, 8)
    assert got["all-reduce"]["count"] == 76
    assert got["all-reduce"]["wire_bytes"] == pytest.approx(76 * 128 * 2 * 7 / 8)


# libtpu's reduce-scatter: an all-reduce whose result a ROOT dynamic-slice cuts to 1/n, in a
# fusion that runs as one reduce-scatter; beside it a plain all-reduce followed by a slice of
# another size (not a reduce-scatter: it stays an all-reduce).
_TPU_REDUCE_SCATTER = """HloModule m

%all-reduce-scatter.3.clone.1 (input.90: bf16[8,512,2048]) -> bf16[8,512,1024] {
  %input.90 = bf16[8,512,2048]{2,1,0} parameter(0)
  %all-reduce.422 = bf16[8,512,2048]{2,1,0} all-reduce(%input.90), replica_groups={{0,2},{1,3}}
  %partition-id.195 = u32[] partition-id()
  ROOT %dynamic-slice.1285 = bf16[8,512,1024]{2,1,0} dynamic-slice(%all-reduce.422, %c, %c, %m)
}

%not-scattered (x: f32[64]) -> f32[8] {
  %x = f32[64]{0} parameter(0)
  %all-reduce.1 = f32[64]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %dynamic-slice.2 = f32[8]{0} dynamic-slice(%all-reduce.1, %i), dynamic_slice_sizes={8}
}

ENTRY %main (a: bf16[8,512,2048]) -> bf16[8,512,1024] {
  %f = bf16[8,512,1024]{2,1,0} fusion(%a), kind=kCustom, calls=%all-reduce-scatter.3.clone.1
  %g = f32[8]{0} fusion(%b), kind=kLoop, calls=%not-scattered
}
"""


def test_tpu_all_reduce_scatter_fusion_counts_as_a_reduce_scatter():
    got = collective_bytes(_TPU_REDUCE_SCATTER, 4)
    operand = 8 * 512 * 2048 * 2
    assert got["reduce-scatter"]["count"] == 1
    assert got["reduce-scatter"]["operand_bytes"] == operand
    assert got["reduce-scatter"]["wire_bytes"] == pytest.approx(operand / 2)  # (n-1)/n, n = 2
    assert got["all-reduce"]["count"] == 1  # the 1/8 slice of a 4-way all-reduce stays one
    assert got["all-reduce"]["wire_bytes"] == pytest.approx(64 * 4 * 2 * 3 / 4)
