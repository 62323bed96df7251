"""`ling-jax merge-checkpoints`: WSM checkpoint merging (reference §6, WSM paper).

Averages the model state of several train checkpoints (a run's last N, or listed steps) with
uniform weights or weights that reproduce a decay profile, and writes a model checkpoint that
`ling-jax export-hf` and `ling-jax logits` read.
"""

from __future__ import annotations

import pathlib

from absl import flags, logging

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_WORKDIR = DEFINE_path("workdir", None, "train run directory (holds checkpoints/)")
_STEPS = flags.DEFINE_list("steps", None, "checkpoint steps to merge (default: the last --last_n)")
_LAST_N = flags.DEFINE_integer("last_n", 4, "merge the newest N checkpoints when --steps is unset")
_WEIGHTS = flags.DEFINE_string("weights", "uniform",
                               "uniform, or a decay profile (linear, cosine, inverse_sqrt) whose "
                               "WSM coefficients the merge uses")
_OUT = DEFINE_path("out", None, "output model checkpoint directory (must not exist)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace --out if it exists")


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not _WORKDIR.value or not _OUT.value:
        raise ValueError("--workdir and --out are required")
    logging.set_verbosity(logging.WARNING)
    from ling_jax.train.merge_run import merge_run_checkpoints

    coeffs, steps, out = merge_run_checkpoints(
        pathlib.Path(_WORKDIR.value), out=pathlib.Path(_OUT.value),
        steps=[int(s) for s in _STEPS.value] if _STEPS.value else None, last_n=_LAST_N.value,
        weights=_WEIGHTS.value, overwrite=_OVERWRITE.value)
    print(f"merged steps {steps} with coefficients {[round(c, 4) for c in coeffs]} -> {out}")
