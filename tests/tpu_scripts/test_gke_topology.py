"""tpu_scripts/gke_topology.py: slice sizes per generation and the mesh that must fill them."""

import pathlib

import pytest
from gke import load_experiment
from gke_topology import TopologyError, check_mesh, parse_slices

MINI = str(pathlib.Path(__file__).resolve().parents[2] / "experiments" / "ling_mini_2_pretrain.py")


@pytest.mark.parametrize("name, slices, chips, per_host, hosts, devices", [
    ("tpu7x:4x8x8", 1, 256, 4, 64, 512),  # TPU7x: 2 devices (TensorCores) per chip
    ("tpu7x:2x2x1", 1, 4, 4, 1, 8),
    ("tpu7x:1x1x1", 1, 1, 1, 1, 2),  # the single-chip host type
    ("v5p:8x8x8", 2, 512, 4, 128, 1024),  # v5p megacore: 1 device per chip
    ("v5p:2x2x4", 1, 16, 4, 4, 16),
])
def test_slice_sizes(name, slices, chips, per_host, hosts, devices):
    s = parse_slices(name, slices)
    assert (s.chips, s.chips_per_host, s.hosts, s.devices) == (chips, per_host, hosts, devices)
    assert s.xpk_type == name.replace(":", "-")


@pytest.mark.parametrize("name, slices, message", [
    ("v5p-8x8x8", 1, "expected GENERATION:AxBxC"),
    ("v4:2x2x2", 1, "the GKE path supports"),
    ("v5p:1x1x3", 1, "3 chips is not a whole number of 4-chip hosts"),
    ("v5p:2x2x1", 2, "multi-slice needs multi-host slices"),
    ("v5p:2x2x4", 0, "--num_slices 0: must be >= 1"),
])
def test_bad_topologies(name, slices, message):
    with pytest.raises(TopologyError, match=message.replace("(", r"\(")):
        parse_slices(name, slices)


def test_mesh_axis_of_minus_one_fills_the_slices():
    # ling_mini_2: context 4 × expert 4 = 16 devices; expert=-1 on tpu7x:2x2x2 (16 devices) → 4.
    cfg = load_experiment(MINI, ["--config.mesh.expert=-1"])
    assert check_mesh(cfg, parse_slices("tpu7x:2x2x2")) == "context=4 × expert=4"
    assert check_mesh(cfg, parse_slices("v5p:2x2x2")) == "context=4 × expert=2"
    cfg = load_experiment(MINI, ["--config.mesh.expert=-1", "--config.mesh.fsdp=3"])
    with pytest.raises(ValueError, match="mesh.expert=-1: 16 devices are not divisible"):
        check_mesh(cfg, parse_slices("tpu7x:2x2x2"))
