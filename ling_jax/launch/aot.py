"""Ahead-of-time compile of an experiment's full train step for a TPU topology (no TPU needed).

`jax.experimental.topologies` describes a TPU slice (or several, over DCN) with compile-only
devices; the train step is lowered on ShapeDtypeStructs carrying the plan's shardings (nothing is
allocated) and compiled by libtpu. XLA's memory analysis then gives per-device bytes:
    peak ≈ arguments + outputs − aliased (donated state) + temporaries + generated code
and cost analysis the FLOPs and bytes accessed per device. The compiled HLO (read from XLA's
dump, since libtpu cannot print every TPU program: launch/hlo_dump.py) gives the collective bytes
per step and, with the chip's published figures, an estimated step time and MFU bound
(launch/step_estimate.py, launch/chips.py). Splash attention is lowered for Mosaic (TPU).
Topology names look like `v5p:8x16x16` or `tpu7x:4x4x8`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from ling_jax.launch import step_estimate
from ling_jax.launch.chips import chip_for_kind
from ling_jax.launch.hlo_dump import compile_with_hlo
from ling_jax.ops.attention_splash import mosaic_lowering
from ling_jax.parallel.pipeline import bubble_fraction
from ling_jax.parallel.sharding import ShardingPlan, plan_for_experiment
from ling_jax.train import flops
from ling_jax.train.experiment import phase_model_config, phase_names
from ling_jax.train.phases import PhaseContext, make_phase_optimizer, phase_graphdef
from ling_jax.train.state import init_state
from ling_jax.train.step import StepConfig, train_step

# HBM per JAX device (bytes). TPU7x exposes each chip (192 GB) as two devices.
HBM_BYTES = {"TPU v5": 95e9, "TPU v5p": 95e9, "TPU v5 lite": 16e9, "TPU v6 lite": 32e9,
             "TPU v4": 32e9, "TPU7x": 96e9}
_COLLECTIVES = ("all-to-all", "ragged-all-to-all", "all-gather", "reduce-scatter", "all-reduce",
                "collective-permute")
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory", "exceeds the memory")


def topology_devices(name: str, num_slices: int = 1) -> list[Any]:
    """Compile-only devices of a TPU topology such as 'v5p:4x4x4' (libtpu; no TPU attached)."""
    from jax.experimental import topologies

    if ":" not in name:
        raise ValueError(f"--topology {name!r}: use GENERATION:SHAPE, e.g. v5p:4x4x4 or tpu7x:2x2x1")
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
    except Exception as e:  # libtpu's message is long; keep its first line
        raise ValueError(f"--topology {name!r}: {str(e).splitlines()[0]}") from None
    return list(topo.devices)


@dataclasses.dataclass
class AotReport:
    topology: str
    num_slices: int
    devices: int
    device_kind: str
    phase: str
    mesh: dict[str, int]
    rules: str
    seq_len: int
    global_batch: int
    microbatches: int
    compile_seconds: float = 0.0
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    peak_bytes: int = 0
    hbm_bytes: float | None = None
    fits: bool | None = None
    flops_per_device: float = 0.0
    model_flops_per_device: float = 0.0
    pipeline_bubble: float = 0.0  # idle share of the circular schedule, (S−1)/(R·M+S−1)
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)  # explicit ones
    bytes_accessed_per_device: float = 0.0  # XLA cost analysis (loop bodies counted once)
    # Per step per device from the compiled HLO, loops multiplied out: {op: wire bytes}.
    collective_bytes: dict[str, float] = dataclasses.field(default_factory=dict)
    collective_bytes_total: float = 0.0
    estimate: dict[str, Any] = dataclasses.field(default_factory=dict)  # StepEstimate fields
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lm_step_fn(cfg, phase_name: str):
    """The LM phase's train-step function, built exactly as ling_jax.train.phases.LMPhase does."""
    phase = cfg.phases[phase_name]
    names = phase_names(cfg)
    ctx = PhaseContext(cfg, None, names.index(phase_name), 0)
    model_cfg = phase_model_config(cfg.model, phase)
    optimizer = make_phase_optimizer(ctx, phase)
    mtp_weight = phase.mtp_weight
    if mtp_weight is None:
        mtp_weight = model_cfg.mtp_loss_scaling_factor
    sc = StepConfig(microbatches=phase.microbatches, mtp_weight=float(mtp_weight),
                    z_coef=float(phase.z_loss), bias_update_rate=float(phase.bias_update_rate),
                    num_mtp=model_cfg.num_nextn_predict_layers,
                    num_moe=model_cfg.num_hidden_layers - model_cfg.first_k_dense_replace)
    fn = functools.partial(train_step, graphdef=phase_graphdef(model_cfg), optimizer=optimizer,
                           sc=sc)
    return fn, optimizer


def abstract_batch(plan: ShardingPlan, batch: int, seq: int) -> dict[str, jax.ShapeDtypeStruct]:
    dtypes = dict(inputs=jnp.int32, targets=jnp.int32, loss_mask=jnp.float32,
                  segment_ids=jnp.int32, positions=jnp.int32)
    return {k: jax.ShapeDtypeStruct((batch, seq), d, sharding=plan.batch) for k, d in dtypes.items()}


def _memory(report: AotReport, compiled, lowered) -> None:
    m = compiled.memory_analysis()
    report.argument_bytes = int(m.argument_size_in_bytes)
    report.output_bytes = int(m.output_size_in_bytes)
    report.alias_bytes = int(m.alias_size_in_bytes)
    report.temp_bytes = int(m.temp_size_in_bytes)
    report.code_bytes = int(m.generated_code_size_in_bytes)
    report.peak_bytes = (report.argument_bytes + report.output_bytes - report.alias_bytes
                         + report.temp_bytes + report.code_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    report.flops_per_device = float((cost or {}).get("flops", 0.0))
    report.bytes_accessed_per_device = float((cost or {}).get("bytes accessed", 0.0))
    report.collectives = _collectives(lowered)


def _estimate(report: AotReport, compiled, hlo: str | None) -> None:
    """Collective bytes from the compiled HLO (XLA's dump, else printed) and the step-time
    estimate for the chip."""
    chip = chip_for_kind(report.device_kind)
    try:
        hlo = hlo if hlo is not None else compiled.as_text()
    except Exception as e:  # noqa: BLE001 - printing is best effort; the compile succeeded
        # libtpu cannot print some programs (async-update ops) and wrote no dump: compute only.
        if chip is not None:
            report.estimate = dataclasses.asdict(step_estimate.estimate(
                chip, report.model_flops_per_device, 0.0))
        report.estimate["error"] = ("collective bytes unknown, compiled HLO not printable: "
                                    + str(e).splitlines()[0][:200])
        return
    per_op = step_estimate.collective_bytes(hlo, report.devices)
    report.collective_bytes = {op: v["wire_bytes"] for op, v in per_op.items()}
    report.collective_bytes_total = sum(report.collective_bytes.values())
    if chip is not None:
        report.estimate = dataclasses.asdict(step_estimate.estimate(
            chip, report.model_flops_per_device, report.collective_bytes_total))


def _collectives(lowered) -> dict[str, int]:
    """Collectives the program itself issues (shard_map: EP transport, psums), before the SPMD
    partitioner adds its own. (Compiled TPU HLO with ragged all-to-all cannot be printed.)"""
    text = lowered.as_text()
    return {op: len(re.findall(rf"[@.]{op.replace('-', '_')}[\"(]", text)) for op in _COLLECTIVES}


def compile_train_step(cfg, devices: list[Any], *, topology: str = "", num_slices: int = 1,
                       phase: str | None = None, dump_dir: str | None = None) -> AotReport:
    """Lower and compile the phase's train step on abstract sharded arrays; report memory/FLOPs.
    `dump_dir` keeps XLA's dump of the compile there (launch/hlo_dump.py)."""
    name = phase or phase_names(cfg)[0]
    if name not in cfg.phases:
        raise ValueError(f"--phase {name!r} is not one of {phase_names(cfg)}")
    ph = cfg.phases[name]
    fn, optimizer = lm_step_fn(cfg, name)
    abstract = jax.eval_shape(lambda: init_state(cfg, optimizer))
    plan = plan_for_experiment(cfg, abstract, devices, phases=[name])
    report = AotReport(topology=topology, num_slices=num_slices, devices=len(devices),
                       device_kind=devices[0].device_kind, phase=name,
                       mesh={k: int(v) for k, v in plan.mesh.shape.items()}, rules=plan.spec.rules,
                       seq_len=int(ph.seq_len), global_batch=int(ph.batch_size),
                       microbatches=int(ph.microbatches),
                       hbm_bytes=HBM_BYTES.get(devices[0].device_kind))
    step_flops = flops.training_flops_per_step(phase_model_config(cfg.model, ph), ph.seq_len,
                                               ph.seq_len * ph.batch_size)
    report.model_flops_per_device = step_flops / len(devices)
    stages = report.mesh.get("pipeline", 1)
    if stages > 1:
        report.pipeline_bubble = bubble_fraction(stages, plan.spec.repeats, plan.spec.microbatches)
    t0 = time.perf_counter()
    try:
        tpu = devices[0].platform == "tpu"
        with plan.context(), (mosaic_lowering() if tpu else contextlib.nullcontext()):
            lowered = plan.jit_step(fn).lower(plan.abstract(abstract),
                                              abstract_batch(plan, ph.batch_size, ph.seq_len))
            compiled, hlo = compile_with_hlo(lowered, dump_dir)
    except Exception as e:  # XLA reports OOM as a runtime error: turn it into a result
        if not any(m in str(e) for m in _OOM_MARKERS):
            raise
        report.compile_seconds = time.perf_counter() - t0
        report.fits, report.error = False, "out of memory: " + _oom_line(str(e))
        return report
    report.compile_seconds = time.perf_counter() - t0
    _memory(report, compiled, lowered)
    _estimate(report, compiled, hlo)
    if report.hbm_bytes:
        report.fits = report.peak_bytes <= report.hbm_bytes
    return report


def _oom_line(message: str) -> str:
    for line in message.splitlines():
        if any(m in line for m in _OOM_MARKERS):
            return line.strip()[:300]
    return message.splitlines()[0][:300]
