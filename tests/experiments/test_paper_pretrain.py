"""The paper recipes (Ling-1T, flash, mini): every phase, 32K and 128K included, fits its mesh's
batch shards and context axis before anything compiles; tokens per step stay within 2% of the paper."""

import pathlib
import sys

import pytest

from ling_jax.parallel.mesh import experiment_phases, mesh_spec, validate_mesh
from ling_jax.parallel.rules import get_rules, shard_count
from ling_jax.train.experiment import validate_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import ling_1t_pretrain  # noqa: E402
import ling_flash_2_pretrain  # noqa: E402
import ling_mini_2_pretrain  # noqa: E402

CASES = {f"ling_1t:{v}": (ling_1t_pretrain.get_config, v) for v in ling_1t_pretrain.VARIANTS}
CASES["flash"] = (ling_flash_2_pretrain.get_config, None)
CASES["mini"] = (ling_mini_2_pretrain.get_config, None)
PAPER_4K_BATCH = {"ling_1t": 18144, "flash": 8352, "mini": 4400}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_phase_fits_the_mesh(name):
    make, variant = CASES[name]
    cfg = make(variant) if variant else make()
    validate_experiment(cfg)
    spec = mesh_spec(cfg.mesh)
    validate_mesh(spec, cfg.model, device_count=spec.num_devices, phases=experiment_phases(cfg))
    rules = get_rules(spec.rules)
    assert shard_count("seq", rules, spec.shape) > 1  # the long phases need context parallelism
    paper_tokens = PAPER_4K_BATCH[name.split(":")[0]] * 4096
    for phase in cfg.phase_order:
        p = cfg.phases[phase]
        assert abs(p.batch_size * p.seq_len / paper_tokens - 1) < 0.02, phase
        assert p.microbatches <= 300, phase
    if name.startswith("ling_1t"):
        assert cfg.phases.pretrain_4k.microbatches <= 64  # was 567 with tensor 8 × expert 32
