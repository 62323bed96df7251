"""`ling-jax params --model NAME`: total and activated parameter counts, nothing allocated."""

from __future__ import annotations

import json

from absl import flags

from ling_jax.cli.errors import user_errors_exit
from ling_jax.config import PRESETS, get_preset
from ling_jax.model.param_count import count_params

_MODEL = flags.DEFINE_string("model", "ling_1t", f"model preset: one of {sorted(PRESETS)}")
_JSON = flags.DEFINE_bool("json", False, "print JSON instead of a table")


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    cfg = get_preset(_MODEL.value)
    c = count_params(cfg)
    rows = {
        "total (no MTP)": c.total,
        "activated (incl. embedding + head)": c.activated,
        "activated non-embedding": c.activated_non_embedding,
        "fp32 expert_bias entries": c.expert_bias,
        f"MTP layers ({cfg.num_nextn_predict_layers}) add, params": c.mtp_total,
        "MTP adds incl. its expert_bias": c.mtp_total + c.mtp_expert_bias,
        "MTP activated per token": c.mtp_activated,
    }
    if _JSON.value:
        print(json.dumps({"model": cfg.name, **{k: v for k, v in rows.items()}}, indent=1))
        return
    print(f"{cfg.name}:")
    for name, value in rows.items():
        print(f"  {name:<40} {value:>20,}")
