"""The sft phase kind in the train loop (one tiny run shared by the tests): before/after tool-call
metrics, the template file, assistant-only targets; config errors before anything compiles."""

import dataclasses
import json

import numpy as np
import pytest

from ling_jax.data.chat_template import chat_template
from ling_jax.data.pipeline import make_pipeline
from ling_jax.train.experiment import ExperimentError, validate_experiment, with_phase_defaults
from ling_jax.train.loop import run_experiment
from ling_jax.train.metrics_log import read_metrics
from ling_jax.train.phase_kinds import kind_names, phase_kind
from tests.train.experiment_fixtures import small_experiment

STEPS = 3


def sft_experiment():
    cfg = small_experiment(pretrain_steps=1, every=100)
    cfg.tokenizer.chat_template = "compact"
    cfg.phases.sft = with_phase_defaults(dict(
        kind="sft", steps=STEPS, seq_len=192, batch_size=2,
        data=dict(long_docs="error", sources=dict(
            tools=dict(kind="builtin_tool_calls", num_docs=100, num_tools=1))),
        lr=dict(kind="wsm", peak_lr=1e-3, warmup_steps=0), bias_update_rate=1e-4,
        sft=dict(eval_problems=4, eval_num_tools=1, max_new_tokens=8)))
    cfg.phase_order = ("sft",)
    cfg.checkpoint.export_final_model = False
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft")
    return workdir, run_experiment(sft_experiment(), workdir)


def test_sft_phase_reports_tool_calls_before_and_after(run):
    workdir, result = run
    rows = [r for r in read_metrics(workdir) if r["phase"] == "sft"]
    assert [r["phase_step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) and r["lm_loss"] > 0 for r in rows)
    first, last = rows[0], rows[-1]
    assert first["tool_call_steps"] == 0 and len(first["tool_call_correct"]) == 4
    assert first["tool_call_ci_low"] <= first["tool_call_accuracy"] <= first["tool_call_ci_high"]
    assert sum(first[f"tool_call_{r}"] for r in ("ok", "no_call", "malformed", "several_calls",
                                                 "wrong_function", "wrong_arguments",
                                                 "wrong_type", "wrong_value")) == 4
    assert len(last["tool_call_correct_end"]) == 4 and last["tool_call_n"] == 4
    assert last["tool_call_before"] == np.mean(first["tool_call_correct"])
    assert last["tool_call_after"] == last["tool_call_accuracy_end"]
    assert "tool_call_accuracy" not in rows[1]  # eval_every=0: start and end only
    saved = json.loads((workdir / "chat_template.json").read_text())
    assert saved == dataclasses.asdict(chat_template("compact"))


def test_sft_batches_train_assistant_tokens_only(run):
    """The phase's last batch: every trained target lies inside an assistant turn."""
    _, result = run
    tok = result.tokenizer
    assert "sft" in kind_names() and phase_kind("sft").__name__ == "SFTPhase"
    # A batch built as the phase builds it (its data block + the experiment's template).
    cfg = sft_experiment()
    data = cfg.phases.sft.data.to_dict() | {"chat_template": "compact"}
    batch = next(make_pipeline(data, seq_len=192, batch_size=2, tokenizer=tok, seed=0))
    targets = batch["targets"][batch["loss_mask"] > 0]
    trained = tok.tok.decode(targets.tolist(), skip_special_tokens=False)
    assert trained.count("<call>") == trained.count("</call>") >= 1
    assert "User:" not in trained and "Tools:" not in trained and "Assistant:" not in trained


@pytest.mark.parametrize("change, message", [
    (lambda c: c.phases.sft.sft.update(eval_every=-1), r"phases.sft.sft.eval_every=-1"),
    (lambda c: c.phases.sft.update(sft=dict(problems=3)), r"unknown field\(s\) \['problems'\]"),
    (lambda c: c.phases.sft.data.update(chat_template="ling"), "set that instead"),
    (lambda c: setattr(c.tokenizer, "chat_template", "chatml"), "tokenizer.chat_template"),
    (lambda c: c.phases.sft.sft.update(max_new_tokens=500), "below seq_len=192"),
    (lambda c: c.phases.sft.update(kind="midtrain"), "only phases of kind 'sft' take an sft"),
])
def test_bad_sft_configs_fail_validation(change, message):
    cfg = sft_experiment()
    change(cfg)
    with pytest.raises(ExperimentError, match=message):
        validate_experiment(cfg)


def test_data_state_carries_the_phase_start_results(tmp_path):
    """A resumed sft phase keeps its step count and phase-start results (before/after report)."""
    from ling_jax.sft.phase import SFTPhase
    from ling_jax.train.phases import PhaseContext
    from ling_jax.train.tokenizer_setup import build_tokenizer

    cfg = sft_experiment()
    tok = build_tokenizer(cfg.tokenizer, cfg.model, tmp_path)
    runner = SFTPhase(PhaseContext(cfg, tok, phase_index=0, start_step=0, workdir=tmp_path),
                      "sft", cfg.phases.sft)
    state = runner.data_state()
    assert state["sft_step"] == 0 and state["heldout_start"] is None
    runner.set_data_state({**state, "sft_step": 2, "heldout_start": [1, 0, 0, 1]})
    assert runner.cursor == 2 and runner.heldout_start == [1, 0, 0, 1]
    assert runner.data_state()["pipeline"] == state["pipeline"]
    runner.close()


# Wall-clock measurements differ between any two runs; everything else must match bitwise.
TIMING = ("step_time", "tokens_per_sec", "mfu", "time_data", "time_step", "time_checkpoint")


def test_sft_resume_is_exact(run, tmp_path):
    """Stop after sft step 1 (mid-phase, no periodic checkpoint), resume: every metric (losses,
    before/after tool-call results) and the final parameters equal the uninterrupted run's."""
    import jax

    full_dir, full = run
    cfg = sft_experiment()
    stopped = run_experiment(cfg, tmp_path, max_steps=1)
    assert stopped.stop_reason == "max_steps" and stopped.global_step == 1
    resumed = run_experiment(sft_experiment(), tmp_path)
    assert resumed.global_step == STEPS
    want, got = read_metrics(full_dir), read_metrics(tmp_path)
    assert len(got) == len(want) == STEPS
    for a, b in zip(want, got, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == \
               {k: v for k, v in b.items() if k not in TIMING}
    jax.tree.map(np.testing.assert_array_equal, full.state["params"], resumed.state["params"])
