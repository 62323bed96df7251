"""TPU slices on GKE and the experiment mesh that must fill them exactly.

Facts per generation (GKE TPU docs; xpk's system characteristics): multi-host slices of v5p
(ct5p-hightpu-4t) and TPU7x (tpu7x-standard-4t) have 4 chips per host VM (a single-chip slice,
topology 1x1x1, has 1); xpk names a slice `<generation>-<topology>`. JAX shows a v5p chip
(megacore) as one device and a TPU7x chip as two (one per TensorCore).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class Generation:
    gke_accelerator: str  # node label cloud.google.com/gke-tpu-accelerator
    devices_per_chip: int  # JAX devices per chip


GENERATIONS = {
    "v5p": Generation(gke_accelerator="tpu-v5p-slice", devices_per_chip=1),
    "tpu7x": Generation(gke_accelerator="tpu7x", devices_per_chip=2),
}
CHIPS_PER_HOST = 4


class TopologyError(ValueError):
    """A topology, slice count or mesh that cannot run; the message names the flag or field."""


@dataclasses.dataclass(frozen=True)
class Slices:
    """`num_slices` identical slices of `generation` with ICI shape `topology` (e.g. 4x8x8)."""

    generation: str
    topology: str
    num_slices: int = 1

    @property
    def name(self) -> str:
        return f"{self.generation}:{self.topology}"

    @property
    def chips(self) -> int:
        """Chips per slice."""
        return math.prod(int(d) for d in self.topology.split("x"))

    @property
    def chips_per_host(self) -> int:
        return 1 if self.chips == 1 else CHIPS_PER_HOST

    @property
    def hosts(self) -> int:
        """Host VMs (= pods, = JAX processes) per slice."""
        return self.chips // self.chips_per_host

    @property
    def devices(self) -> int:
        """JAX devices over all slices."""
        return self.chips * GENERATIONS[self.generation].devices_per_chip * self.num_slices

    @property
    def xpk_type(self) -> str:
        return f"{self.generation}-{self.topology}"


def parse_slices(name: str, num_slices: int = 1) -> Slices:
    """'tpu7x:4x8x8' → Slices; one clear error for a malformed or unsupported name."""
    match = re.fullmatch(r"([a-z0-9]+):(\d+x\d+x\d+)", name or "")
    if not match:
        raise TopologyError(f"--topology {name!r}: expected GENERATION:AxBxC, e.g. tpu7x:4x8x8 or "
                            "v5p:8x8x8")
    generation, topology = match.groups()
    if generation not in GENERATIONS:
        raise TopologyError(f"--topology {name!r}: the GKE path supports {sorted(GENERATIONS)}; "
                            "other generations: tpu_scripts/tpu.py (TPU VMs)")
    if num_slices < 1:
        raise TopologyError(f"--num_slices {num_slices}: must be >= 1")
    slices = Slices(generation, topology, num_slices)
    if slices.chips == 0 or (slices.chips > 1 and slices.chips % CHIPS_PER_HOST):
        raise TopologyError(f"--topology {name!r}: {slices.chips} chips is not a whole number of "
                            f"{CHIPS_PER_HOST}-chip hosts")
    if num_slices > 1 and slices.hosts == 1:
        raise TopologyError(f"--num_slices {num_slices}: multi-slice needs multi-host slices; "
                            f"{name} is a single host")
    return slices


def check_mesh(cfg: Any, slices: Slices) -> str:
    """Validate the experiment's mesh against the slices (devices, DCN axes), its model and every
    phase's batch (as `ling-jax train` will); returns the mesh as 'axis=size × ...'. Raises
    one-line ValueErrors."""
    from ling_jax.parallel.mesh import MESH_AXES, experiment_phases, mesh_spec, validate_mesh

    spec = mesh_spec(cfg.get("mesh", None), slices.devices)
    desc = " × ".join(f"{a}={n}" for a, n in spec.shape.items() if n > 1) or "one device"
    if spec.num_devices != slices.devices:
        per_chip = GENERATIONS[slices.generation].devices_per_chip
        raise TopologyError(
            f"--topology {slices.name} × {slices.num_slices} slice(s) has {slices.devices} devices "
            f"({slices.num_slices} × {slices.chips} chips × {per_chip} per chip) but the mesh "
            f"({desc}) uses {spec.num_devices}; pick a matching topology or change "
            "--config.mesh.<axis>")
    dcn = math.prod(spec.dcn[a] for a in MESH_AXES)
    if dcn != slices.num_slices:
        raise TopologyError(
            f"mesh.dcn_*: the DCN axes span {dcn} slice(s) but --num_slices is "
            f"{slices.num_slices}; set e.g. --config.mesh.dcn_data={slices.num_slices} with the "
            "ICI axes sized for one slice")
    validate_mesh(spec, cfg.model, device_count=slices.devices,
                  phases=experiment_phases(cfg))
    return desc
