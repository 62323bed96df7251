"""Published per-chip figures of accelerators, for paper estimates of a compiled step.

One row per chip: peak dense bf16 FLOP/s (from train/flops.py's CHIP_PEAK_BF16, the MFU table),
HBM capacity and bandwidth, bidirectional ICI bandwidth and DCN bandwidth, and JAX devices per chip.
Source: Cloud TPU system architecture pages, docs.cloud.google.com/tpu/docs/v5p and
/tpu/docs/tpu7x (the table comparing v5p, v6e and TPU7x: HBM GiB, HBM GB/s, "bi-directional
inter-chip interconnect (ICI) bandwidth per chip (GB/s)", "DCN bandwidth per chip (Gb/s)"). Chips
without such a published row are left out rather than guessed.
"""

from __future__ import annotations

import dataclasses

from ling_jax.train.flops import CHIP_PEAK_BF16


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_bf16: float  # FLOP/s per chip
    hbm_bytes: float  # per chip
    hbm_bw: float  # bytes/s per chip
    ici_bw: float  # bytes/s per chip, bidirectional
    dcn_bw: float  # bytes/s per chip
    devices_per_chip: int = 1

    def per_device(self, value: float) -> float:
        return value / self.devices_per_chip


_GiB, _GB = 2**30, 1e9
# name: (table key in CHIP_PEAK_BF16, HBM GiB, HBM GB/s, ICI GB/s bidirectional, DCN Gb/s)
_FIGURES = {
    "v5p": ("tpu v5p", 95, 2765, 1200, 50),
    "v6e": ("tpu v6e", 32, 1638, 800, 100),
    "tpu7x": ("tpu7x", 192, 7380, 1200, 100),
}
CHIPS: dict[str, Chip] = {
    name: Chip(name, CHIP_PEAK_BF16[key][0], hbm * _GiB, hbm_bw * _GB, ici * _GB, dcn * _GB / 8,
               CHIP_PEAK_BF16[key][1])
    for name, (key, hbm, hbm_bw, ici, dcn) in _FIGURES.items()
}
# JAX device_kind strings → rows above.
_KINDS = {"tpu v5": "v5p", "tpu v5p": "v5p", "tpu v6 lite": "v6e", "tpu v6e": "v6e",
          "tpu7x": "tpu7x", "tpu v7x": "tpu7x"}


def chip_for_kind(device_kind: str) -> Chip | None:
    """The row for a JAX device_kind such as 'TPU v5' or 'TPU7x'; None when unknown."""
    name = _KINDS.get(device_kind.lower().strip())
    return CHIPS.get(name) if name else None
