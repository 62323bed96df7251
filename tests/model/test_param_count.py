"""Parameter counts on the abstract model equal the reference §8.1 figures exactly."""

import pytest

from ling_jax.config import get_preset
from ling_jax.model.param_count import count_params

# (total no MTP, activated incl. embedding + head, activated non-embedding, MTP adds incl. bias,
#  fp32 expert_bias entries) — reference §8.1.
REFERENCE = {
    "ling_mini_2": (16_255_638_528, 1_432_968_192, 789_142_528, 827_861_504, 4_864),
    "ling_flash_2": (102_889_697_280, 6_152_269_824, 4_864_618_496, 3_306_181_120, 7_936),
    "ling_1t": (999_705_309_184, 51_054_407_680, 48_479_105_024, 13_222_584_832, 19_456),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_counts_match_reference(name):
    c = count_params(get_preset(name))
    total, activated, non_emb, mtp, bias = REFERENCE[name]
    assert c.total == total
    assert c.activated == activated
    assert c.activated_non_embedding == non_emb
    assert c.mtp_total + c.mtp_expert_bias == mtp
    assert c.expert_bias == bias
