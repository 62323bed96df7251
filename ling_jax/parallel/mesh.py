"""The device mesh from an experiment's `mesh` block, validated before anything compiles.

    mesh = dict(data=1, fsdp=8, context=1, expert=4, tensor=1,         # ICI sizes (one may be -1)
                pipeline=1,
                dcn_data=2,                                            # DCN (multi-slice) sizes
                rules="fsdp_ep", repeats=1, pipeline_microbatches=0,   # rules, pipeline schedule
                capacity_factor=0.0, ep_local_backend="blocked",       # expert parallelism
                context_exchange="all_gather")                         # context parallelism
Each axis spans ICI size × DCN size devices. The axis order puts `tensor` innermost (fastest
links) and `pipeline` outermost; `context` (context parallelism: the sequence sharded, K/V
all-gathered or passed round a ring in attention, `context_exchange`) sits between fsdp and
expert. Axis types are Auto: jit propagates shardings between the in/out shardings and the
constraints we set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from ling_jax.ops.attention_context import EXCHANGES, RING_BACKENDS
from ling_jax.parallel.rules import RULE_SETS, get_rules, shard_count

MESH_AXES = ("pipeline", "data", "fsdp", "context", "expert", "tensor")

MESH_DEFAULTS: dict[str, Any] = {
    **{a: 1 for a in MESH_AXES},
    **{f"dcn_{a}": 1 for a in MESH_AXES},
    "rules": "fsdp_ep",
    "repeats": 1,  # virtual pipeline stages per device (circular schedule)
    "pipeline_microbatches": 0,  # 0: 2 × stages
    "capacity_factor": 0.0,  # expert parallelism: 0 = dropless
    "ep_local_backend": "blocked",  # grouped compute on each device's received rows
    "context_exchange": "all_gather",  # K/V over the context axis: all_gather | ring
}


class MeshError(ValueError):
    """A mesh block that cannot work; the message names the field(s)."""


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    ici: dict[str, int]
    dcn: dict[str, int]
    rules: str
    repeats: int = 1
    pipeline_microbatches: int = 0
    capacity_factor: float = 0.0
    ep_local_backend: str = "blocked"
    context_exchange: str = "all_gather"

    @property
    def shape(self) -> dict[str, int]:
        """Total size of each axis (ICI × DCN), in MESH_AXES order."""
        return {a: self.ici[a] * self.dcn[a] for a in MESH_AXES}

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape.values())

    @property
    def microbatches(self) -> int:
        """Pipeline microbatches per step (per train-step microbatch)."""
        return self.pipeline_microbatches or 2 * self.shape["pipeline"]


def mesh_block(**fields) -> ml_collections.ConfigDict:
    """An experiment's `mesh` block with every field present (so --config.mesh.X=... works)."""
    unknown = sorted(set(fields) - set(MESH_DEFAULTS))
    if unknown:
        raise MeshError(f"mesh: unknown field(s) {unknown}; allowed {sorted(MESH_DEFAULTS)}")
    return ml_collections.ConfigDict({**MESH_DEFAULTS, **fields})


def _field(cfg: Any, key: str) -> Any:
    if cfg is None:
        return MESH_DEFAULTS[key]
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return MESH_DEFAULTS[key] if value is None else value


def mesh_spec(cfg: Any, device_count: int | None = None) -> MeshSpec:
    """Read a mesh block (ConfigDict or dict; None = one device); resolves one ICI size of -1."""
    if cfg is not None:
        unknown = sorted(set(cfg.keys()) - set(MESH_DEFAULTS))
        if unknown:
            raise MeshError(f"mesh: unknown field(s) {unknown}; allowed {sorted(MESH_DEFAULTS)}")
    ici = {a: _field(cfg, a) for a in MESH_AXES}
    dcn = {a: _field(cfg, f"dcn_{a}") for a in MESH_AXES}
    for name, value in [*ici.items(), *((f"dcn_{a}", v) for a, v in dcn.items())]:
        if not isinstance(value, int | np.integer) or (value < 1 and value != -1):
            raise MeshError(f"mesh.{name}: must be a positive int (or -1 for one ICI axis), "
                            f"got {value!r}")
    if any(v == -1 for v in dcn.values()):
        raise MeshError("mesh.dcn_*: -1 is only allowed for ICI sizes")
    fill = [a for a, v in ici.items() if v == -1]
    if len(fill) > 1:
        raise MeshError(f"mesh: at most one axis may be -1, got {fill}")
    if fill:
        if device_count is None:
            raise MeshError(f"mesh.{fill[0]}=-1 needs a device count")
        rest = math.prod(v for a, v in ici.items() if a != fill[0]) * math.prod(dcn.values())
        if device_count % rest:
            raise MeshError(f"mesh.{fill[0]}=-1: {device_count} devices are not divisible by "
                            f"the other axes' product {rest}")
        ici[fill[0]] = device_count // rest
    spec = MeshSpec(ici, dcn, str(_field(cfg, "rules")), int(_field(cfg, "repeats")),
                    int(_field(cfg, "pipeline_microbatches")),
                    float(_field(cfg, "capacity_factor")), str(_field(cfg, "ep_local_backend")),
                    str(_field(cfg, "context_exchange")))
    get_rules(spec.rules)  # unknown name → MeshError-like ValueError naming mesh.rules
    return spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MeshError(message)


def validate_mesh(spec: MeshSpec, model_cfg: Any, *, device_count: int | None = None,
                  phases: Iterable[tuple[str, int, int]] = ()) -> None:
    """Raise MeshError (one line naming the fields) unless the mesh fits model, batch, devices.

    `phases`: (name, global batch_size, microbatches[, seq_len]) of every phase that will run
    on the mesh.
    """
    shape = spec.shape
    desc = " × ".join(f"{a}={shape[a]}" for a in MESH_AXES)
    if device_count is not None:
        _check(spec.num_devices == device_count,
               f"mesh: {desc} uses {spec.num_devices} devices but {device_count} are available; "
               "make the product of mesh.<axis> × mesh.dcn_<axis> equal the device count")
    experts, tensor = model_cfg.num_experts, shape["tensor"]
    _check(experts % shape["expert"] == 0,
           f"mesh.expert: model.num_experts={experts} is not divisible by expert={shape['expert']}")
    for field in ("num_attention_heads", "num_key_value_heads"):
        _check(model_cfg[field] % tensor == 0,
               f"mesh.tensor: model.{field}={model_cfg[field]} is not divisible by tensor={tensor}")
    stages, repeats = shape["pipeline"], spec.repeats
    _check(repeats >= 1, f"mesh.repeats: must be >= 1, got {repeats}")
    moe_layers = model_cfg.num_hidden_layers - model_cfg.first_k_dense_replace
    _check(stages == 1 or moe_layers % (stages * repeats) == 0,
           f"mesh.pipeline/mesh.repeats: the {moe_layers} MoE layers are not divisible by "
           f"pipeline × repeats = {stages} × {repeats}")
    _check(stages == 1 or spec.microbatches >= stages,
           f"mesh.pipeline_microbatches: {spec.microbatches} must be >= pipeline={stages} "
           "(the circular schedule re-enters stage 0 from a per-microbatch buffer)")
    _check(spec.capacity_factor >= 0,
           f"mesh.capacity_factor: must be >= 0 (0 = dropless), got {spec.capacity_factor}")
    _check(not spec.ep_local_backend.startswith("ep_"),
           f"mesh.ep_local_backend: {spec.ep_local_backend!r} must be a local backend "
           "(blocked, ragged_dot, ...), not an expert-parallel one")
    _check(spec.context_exchange in EXCHANGES,
           f"mesh.context_exchange: {spec.context_exchange!r} is not one of {list(EXCHANGES)}")
    _check(spec.context_exchange != "ring" or model_cfg.attention_backend in RING_BACKENDS,
           f"mesh.context_exchange: 'ring' runs the {sorted(RING_BACKENDS)} attention kernels; set "
           f"model.attention_backend to one of them or context_exchange='all_gather'")
    context = shard_count("seq", get_rules(spec.rules), shape)
    _check(context == 1 or stages == 1,
           f"mesh.context: context parallelism ({context}) does not run inside the pipeline "
           f"(pipeline={stages}); use one of them")
    shards = shard_count("batch", get_rules(spec.rules), shape)
    pipe_mb = spec.microbatches if stages > 1 else 1
    for name, batch, micro, *seq in phases:
        _check(context == 1 or not seq or seq[0] % (2 * context) == 0,
               f"phases.{name}.seq_len: {seq[0] if seq else 0} is not divisible by 2 × "
               f"mesh.context ({2 * context}); context parallelism cuts each sequence into "
               "2 × context chunks")
        need = shards * micro * pipe_mb
        per_shard, uneven = divmod(batch, shards * pipe_mb)
        fix = (f"set phases.{name}.microbatches to a divisor of {per_shard}" if not uneven
               else f"set phases.{name}.batch_size to a multiple of {need}")
        _check(batch % need == 0,
               f"phases.{name}.batch_size: {batch} is not divisible by the batch shards "
               f"({shards}, rule set {spec.rules!r}) × microbatches ({micro})"
               + (f" × mesh.pipeline_microbatches ({pipe_mb})" if stages > 1 else "")
               + f"; {fix}")


def make_mesh(spec: MeshSpec, devices: Sequence[Any] | None = None) -> Mesh:
    """The jax Mesh (axes MESH_AXES, Auto types); hybrid ICI×DCN layout for multi-slice."""
    devices = list(jax.devices() if devices is None else devices)
    _check(len(devices) == spec.num_devices,
           f"mesh: {spec.num_devices} devices needed, {len(devices)} given")
    types = (AxisType.Auto,) * len(MESH_AXES)
    ici = [spec.ici[a] for a in MESH_AXES]
    dcn = [spec.dcn[a] for a in MESH_AXES]
    if math.prod(dcn) == 1:
        try:
            return jax.make_mesh(ici, MESH_AXES, axis_types=types, devices=devices)
        except NotImplementedError:  # TPU torus: an axis (e.g. 4 on 8x8x8) splits a physical axis
            grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
            return Mesh(grid, MESH_AXES, axis_types=types)
    if hasattr(devices[0], "slice_index"):
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                    allow_split_physical_axes=True)
    else:  # CPU test devices have no slices: DCN axes outermost, in device order
        grid = np.array(devices).reshape(*dcn, *ici)
        n = len(MESH_AXES)
        grid = grid.transpose(*(j for i in range(n) for j in (i, i + n)))
        grid = grid.reshape([i * d for i, d in zip(ici, dcn, strict=True)])
    return Mesh(grid, MESH_AXES, axis_types=types)


def experiment_phases(cfg: Any) -> list[tuple[str, int, int]]:
    """(name, batch_size, microbatches, seq_len) of an experiment's phases, for validate_mesh."""
    return [(n, int(cfg.phases[n].batch_size), int(cfg.phases[n].microbatches),
             int(cfg.phases[n].get("seq_len", 0) or 0)) for n in cfg.phase_order]


__all__ = ["MESH_AXES", "MESH_DEFAULTS", "MeshError", "MeshSpec", "RULE_SETS", "experiment_phases",
           "make_mesh", "mesh_block", "mesh_spec", "validate_mesh"]
