"""experiments/colab_tiny_post.py: its phases and settings (checked without training) and its
report on hand-made metrics."""

import pathlib
import sys

import pytest

from ling_jax.data.chat_template import chat_template
from ling_jax.train.experiment import phase_names, validate_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import colab_tiny  # noqa: E402
import colab_tiny_post  # noqa: E402


def test_phases_and_settings():
    cfg = colab_tiny_post.get_config()
    validate_experiment(cfg)
    assert phase_names(cfg) == ["pretrain", "midtrain", "sft", "rl", "midtrain_code", "rl_code"]
    assert [cfg.phases[n].kind for n in phase_names(cfg)] == ["pretrain", "midtrain", "sft", "rl",
                                                              "midtrain", "rl"]
    assert cfg.phases.rl_code.data.sources.code.kind == "builtin_code"
    assert "code_function" in cfg.phases.rl_code.rl.reward_weights
    assert chat_template(cfg.tokenizer.chat_template) == chat_template("compact")
    sft = cfg.phases.sft
    assert sft.data.long_docs == "error"  # conversations are packed whole
    assert sft.data.sources.tools.num_tools == sft.sft.eval_num_tools >= 2
    assert sft.sft.eval_problems >= 200
    assert cfg.phases.pretrain.to_dict() == colab_tiny.get_config().phases.pretrain.to_dict()
    assert cfg.phases.rl.rl.objective == "lpo"
    assert phase_names(colab_tiny_post.sft_only_config()) == ["sft"]


def test_report_states_both_ends_with_intervals():
    sft = {"phase": "sft", "tool_call_before": 0.0, "tool_call_after": 0.05, "tool_call_n": 200.0,
           "tool_call_delta": 0.05, "tool_call_delta_low": 0.02, "tool_call_delta_high": 0.08}
    rl = [{"phase": "rl", "heldout_rl_steps": 0, "heldout_correct": [1, 0, 0, 1],
           "response_length": 20.0},
          {"phase": "rl", "heldout_correct_end": [1, 1, 0, 1], "response_length": 15.5}]
    text = colab_tiny_post.report([sft, *rl])
    assert ("held-out tool-call accuracy 0.000 (95% CI 0.000-0.019) -> 0.050 (95% CI "
            "0.027-0.090) (n=200); paired difference +0.050 (95% CI +0.020 to +0.080)") in text
    assert "0.500" in text and "0.750" in text and "20.0" in text and "15.5" in text
    with pytest.raises(ValueError, match="no finished sft phase"):
        colab_tiny_post.report(rl)
