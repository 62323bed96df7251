"""A tiny experiment with a mesh and an aot block, for `ling-jax aot` tests (v5p, 4 chips)."""

from tests.parallel.helpers import small_cfg


def get_config(arg: str = "ep_ragged_all_to_all"):
    cfg = small_cfg(dict(fsdp=2, expert=2), backend=arg)
    cfg.aot = dict(topology="v5p:2x2x1", num_slices=1)
    return cfg
