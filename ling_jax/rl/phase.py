"""The `rl` phase kind: Evo-CoT reinforcement learning in the one train loop (reference §7.2-7.3).

One RL step (one loop step):
  1. held-out greedy accuracy (exact match / pass@1, by task) and mean response tokens of the
     incoming policy every `eval_every` steps;
  2. P prompts of the current Evo-CoT stage, G samples each from the current policy (KV cache);
  3. rewards (math answer + format + stage-α length reward), group z-score advantages,
     sentence ids (LPO);
  4. log π_old recomputed by the training forward (so the first update's ratio is exactly 1;
     the sampler's own log-probs are compared with it as `logp_gap`);
  5. K = epochs × minibatches objective updates, each followed by the expert-bias update.
Exact resume: sampling keys derive from (experiment seed, phase name, global step), the minibatch
order from the same key, the prompts from the step; the data state is the step cursor.
The loop finds it as phase kind "rl" through train/phase_kinds.py. Helpers: rl/compiled.py (the
cached compiled functions), rl/phase_optimizer.py, rl/reference.py (the frozen KL reference),
rl/step_metrics.py.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ling_jax.data.arithmetic import difficulty_at
from ling_jax.model.decode import SamplingParams
from ling_jax.rl import compiled
from ling_jax.rl.config import rl_settings, stage_at, task_source, validate_rl_phase
from ling_jax.rl.evaluation import greedy_eval, heldout_change
from ling_jax.rl.phase_optimizer import (
    optimizer_config,
    phase_optimizer,
    phase_start_opt_state,
    with_hyperparams,
)
from ling_jax.rl.plots import plot_rl
from ling_jax.rl.process_groups import (
    own_groups,
    place,
    place_prompts,
    process_rows,
    share_scores,
)
from ling_jax.rl.reference import REFERENCE_DIR, reference_policy
from ling_jax.rl.rollout import (
    Rollouts,
    encode_prompts,
    rollouts_from,
    score_rollouts,
    sentence_ids,
    take_rows,
    training_batch,
)
from ling_jax.rl.step_metrics import rollout_metrics
from ling_jax.rl.tasks import get_task
from ling_jax.rl.update import UpdateConfig, minibatch_order
from ling_jax.train.balancing import load_metrics
from ling_jax.train.experiment import ExperimentError, phase_model_config, phase_steps
from ling_jax.train.multihost import host_value
from ling_jax.train.phases import PhaseContext, phase_seed

__all__ = ["REFERENCE_DIR", "RLPhase", "optimizer_config", "with_hyperparams"]


class RLPhase:
    """PhaseRunner of kind "rl" (see ling_jax.rl.config for the fields)."""

    @staticmethod
    def validate(name: str, phase, cfg) -> None:
        del cfg
        try:
            validate_rl_phase(name, phase, phase_steps(phase))
        except ValueError as e:
            raise ExperimentError(str(e)) from None

    @staticmethod
    def optimizer_updates(phase) -> int:
        """Optimizer updates of the phase (its schedule's default total_steps): K per RL step."""
        rl = rl_settings(phase)
        return phase_steps(phase) * int(rl["epochs"]) * int(rl["minibatches"])

    def __init__(self, ctx: PhaseContext, name: str, phase):
        exp, rl = ctx.experiment, rl_settings(phase)
        self.name, self.steps, self.rl, self.tokenizer = name, phase_steps(phase), rl, ctx.tokenizer
        self.stages = validate_rl_phase(name, phase, self.steps)
        self.model_cfg = phase_model_config(exp.model, phase)
        self.prompts_per_step, self.group_size = int(phase.batch_size), rl["group_size"]
        self.max_prompt = rl["max_prompt_tokens"]
        self.slots = int(phase.seq_len) - self.max_prompt
        self.source = task_source(phase, f"phases.{name}")
        self.task = get_task(self.source["kind"])
        sandbox = dict(rl["reward_params"].get("code_function", {}))
        self.sandbox = {k: v for k, v in sandbox.items() if k != "partial_credit"}
        tok = ctx.tokenizer
        self.pad_id = tok.pad_id if tok.pad_id is not None else tok.eos_id
        model_json = self.model_cfg.to_json()
        stop = dict(stop_ids=(int(tok.eos_id),), pad_id=int(self.pad_id))
        sampling = SamplingParams(float(rl["temperature"]), float(rl["top_p"]), int(rl["top_k"]),
                                  **stop)
        self._generate = compiled.generate_fn(model_json, self.slots, sampling, self.group_size)
        self._greedy = compiled.generate_fn(model_json, self.slots, SamplingParams(0.0, **stop))
        self._score = compiled.scoring_fn(model_json, self.max_prompt, float(rl["temperature"]))
        self._update = self._make_update(ctx, phase, model_json)
        self.base_key = jax.random.key(phase_seed(exp.seed, name))
        difficulty = rl["eval_difficulty"] or sorted({d for s in self.stages for d in s.difficulty})
        self.eval_set = self.task.problems("heldout", rl["eval_problems"], difficulty,
                                           seed=self.source["seed"])
        self.workdir = getattr(ctx, "workdir", None)
        self.batch_rows = getattr(ctx, "rows_fn", None)
        self.place_batch = getattr(ctx, "place_batch", None)
        # Scoring and updates trace under the plan (EP, context parallelism); sampling does not
        # (cached decoding runs with the sequence whole).
        self.traced = getattr(ctx, "trace_context", None) or contextlib.nullcontext
        if rl["kl_beta"] > 0 and self.workdir is None:
            raise ValueError(f"phases.{name}.rl.kl_beta > 0 needs PhaseContext.workdir to keep "
                             "the frozen reference policy across restarts")
        self.reference = None
        self.cursor = 0  # RL steps done in this phase
        self.heldout_start: list[int] | None = None  # held-out results of the incoming policy
        self.heldout_tokens_start: float | None = None  # and its mean response tokens

    def _make_update(self, ctx: PhaseContext, phase, model_json: str):
        rl = self.rl
        kwargs = {k: float(rl[f]) for k, f in (("eps", "clip_eps"), ("eps_high", "clip_eps_high"))
                  if rl[f] is not None}
        num_moe = self.model_cfg.num_hidden_layers - self.model_cfg.first_k_dense_replace
        uc = UpdateConfig(rl["objective"], tuple(sorted(kwargs.items())),
                          float(rl["temperature"]), self.max_prompt,
                          float(phase.bias_update_rate), num_moe, float(rl["kl_beta"]))
        updates, reset = rl["epochs"] * rl["minibatches"], bool(rl["reset_optimizer"])
        self.optimizer = phase_optimizer(ctx, phase, rl, updates, reset)
        key = json.dumps([optimizer_config(ctx, rl), dict(phase.lr), updates, reset,
                          0 if reset else ctx.start_step, self.steps], sort_keys=True, default=str)
        return compiled.update_fn(model_json, uc, compiled.HashedOptimizer(key, self.optimizer))

    # -- data ---------------------------------------------------------------------------------

    def problems(self, step_in_phase: int):
        """The P prompts of a phase step: consecutive problems of the source at the stage level."""
        stage = stage_at(self.stages, step_in_phase)
        first = step_in_phase * self.prompts_per_step
        src = self.source
        return [self.task.problem(i % src["num_docs"], split=src["split"], seed=src["seed"],
                                  difficulty=difficulty_at(i, stage.difficulty))
                for i in range(first, first + self.prompts_per_step)]

    def data_state(self) -> dict:
        # The phase-start held-out results travel with the checkpoint: the closing before/after
        # report of a resumed run needs them.
        return {"rl_step": self.cursor, "heldout_start": self.heldout_start,
                "heldout_tokens_start": self.heldout_tokens_start}

    def set_data_state(self, state: dict) -> None:
        self.cursor = int(state["rl_step"])
        self.heldout_start = state.get("heldout_start")
        self.heldout_tokens_start = state.get("heldout_tokens_start")

    def close(self) -> None:
        pass

    def plot(self, records: list[dict], out_path) -> pathlib.Path:
        """Reward / accuracy / held-out accuracy / length / clip / KL / entropy curves and the
        held-out accuracy-vs-tokens curve (PNG)."""
        return plot_rl(records, self.name, out_path, metric=self.task.metric)

    # -- the step -----------------------------------------------------------------------------

    def evaluate(self, state: dict) -> tuple[np.ndarray, np.ndarray]:
        """([n] bool correct, [n] response tokens): greedy responses to the held-out set under
        `state`'s policy (exact match or pass@1, by task)."""
        return greedy_eval(self._greedy, state["params"], state["biases"], self.tokenizer,
                           self.eval_set, max_prompt_tokens=self.max_prompt,
                           max_steps=self.slots, pad_id=self.pad_id,
                           correct_fn=lambda texts, problems: self.task.correct(
                               texts, problems, **self.sandbox))

    def _phase_start_opt_state(self, state: dict):
        """The optimizer state the phase starts from (phase_optimizer.phase_start_opt_state)."""
        return phase_start_opt_state(self.optimizer, self.rl, state)

    def _eval_metrics(self, state: dict, suffix: str = "") -> dict:
        correct, tokens = self.evaluate(state)
        return {f"heldout_accuracy{suffix}": float(correct.mean()),
                f"heldout_tokens{suffix}": float(tokens.mean()),
                f"heldout_correct{suffix}": correct.astype(np.int32).tolist(),
                f"heldout_response_tokens{suffix}": tokens.astype(np.int32).tolist()}

    def step(self, state: dict) -> tuple[dict, dict]:
        """One RL step: held-out eval, experience (rollout → reward → advantage → log π_old),
        then the K objective updates."""
        k, rl = self.cursor, self.rl
        start = time.perf_counter()
        key = jax.random.fold_in(self.base_key, int(state["step"]))
        metrics: dict = {}
        if k == 0:
            state = {**state, "opt_state": self._phase_start_opt_state(state)}
        if k % rl["eval_every"] == 0:
            metrics.update(self._eval_metrics(state), heldout_rl_steps=k)
            if k == 0:
                self.heldout_start = metrics["heldout_correct"]
                self.heldout_tokens_start = metrics["heldout_tokens"]
        t0 = time.perf_counter()
        batch, extra = self._experience(state, k, jax.random.fold_in(key, 0))
        t1 = time.perf_counter()
        # 5. update: K = epochs × minibatches objective updates, each with the expert-bias update
        order = minibatch_order(self.prompts_per_step, self.group_size, rl["minibatches"],
                                rl["epochs"], jax.random.fold_in(key, 1))
        with self.traced():
            state, updates = self._update(state, batch, jnp.asarray(order))
        updates = jax.device_get(updates)
        self.cursor += 1
        metrics.update(extra, **updates, time_rollout=t1 - t0, time_update=time.perf_counter() - t1)
        # Share of the step's wall time spent sampling (decode); eval generation excluded.
        metrics["generate_share"] = extra["time_generate"] / max(time.perf_counter() - start, 1e-9)
        metrics.update({f"load_{n}": v for n, v in load_metrics(updates["expert_counts"]).items()})
        if self.cursor == self.steps:
            metrics.update(self._eval_metrics(state, "_end"))
            if self.heldout_start is not None:  # the paired before/after report of the phase
                metrics.update(heldout_change(self.heldout_start, metrics["heldout_correct_end"]))
                if self.heldout_tokens_start is not None:
                    metrics["heldout_tokens_before"] = self.heldout_tokens_start
        return state, metrics

    def _experience(self, state: dict, k: int, key: jax.Array) -> tuple[dict, dict]:
        """Rollouts of phase step k scored into a training batch (with log π_old) + metrics.

        Under a mesh the N = P × G rollout rows are laid out like any batch: each process
        generates the rows its devices hold (whole groups), scores its own groups, and the
        [P, G] rewards are shared so that every process builds the same advantages and metrics.
        """
        rl, stage = self.rl, stage_at(self.stages, k)
        problems = self.problems(k)
        n = self.prompts_per_step * self.group_size
        rows = process_rows(self.batch_rows, n, self.group_size, self.name)
        # 1. rollout: G samples of each of the P prompts from the current policy
        ids, lengths = encode_prompts(self.tokenizer, [p.prompt for p in problems],
                                      self.max_prompt, self.pad_id)
        t0 = time.perf_counter()
        prompt = place_prompts(self.place_batch, self.batch_rows, ids, lengths, rows,
                               self.group_size, self.name)
        out = self._generate(state["params"], state["biases"], prompt["ids"], prompt["lengths"],
                             key, jnp.int32(stage.max_response_tokens))
        ids, lengths = (np.repeat(x, self.group_size, axis=0) for x in (ids, lengths))
        rollouts = rollouts_from(ids, lengths, out, self.tokenizer)
        time_generate = time.perf_counter() - t0
        # 2. reward: answer + format + the stage's length reward, [P, G]; each process scores
        #    the groups it generated
        rewards, components, correct = self._rewards(rollouts, problems, rows, stage)
        # 3. advantage: group z-scores, laid out with the sentence ids as the update's batch
        sids = sentence_ids(rollouts, self.tokenizer, rl["pause_chars"], rl["objective"] == "lpo")
        full = training_batch(rollouts, rewards, sids, rl["advantage_eps"])
        batch = place(self.place_batch, {f: x[rows] for f, x in full.items()})
        # 4. log π_old (and log π_ref) by the training forward; the update follows in step()
        inputs = {f: batch[f] for f in ("tokens", "positions", "segment_ids", "response")}
        with self.traced():
            batch["logp_old"], entropy = self._score(state["params"], state["biases"], inputs)
            if rl["kl_beta"] > 0:
                ref_params, ref_biases = self._reference(state, k)
                batch["logp_ref"] = self._score(ref_params, ref_biases, inputs)[0]
        seen = dict(full, logp_old=host_value(batch["logp_old"]))
        return batch, {**rollout_metrics(rollouts, problems, self.group_size, rewards,
                                         components, seen, host_value(entropy), stage, correct),
                       "time_generate": time_generate}

    def _rewards(self, rollouts: Rollouts, problems, rows: np.ndarray, stage):
        """[P, G] rewards and components, and [N] correct: this process scores its own groups,
        then every process gets every group's (rl/process_groups.py)."""
        groups, own_rows = own_groups(rows, self.group_size)
        local, local_problems = take_rows(rollouts, own_rows), [problems[p] for p in groups]
        rewards, components = score_rollouts(local, local_problems, self.group_size,
                                             self.rl["reward_weights"], self.rl["reward_params"],
                                             stage.length_alpha, self.task)
        repeated = [p for p in local_problems for _ in range(self.group_size)]
        correct = np.asarray(self.task.correct(local.texts, repeated, **self.sandbox), bool)
        return share_scores(groups, len(problems), rewards, components, correct)

    def _reference(self, state: dict, step_in_phase: int):
        """(params, biases) of the phase start (kl_beta > 0), kept under the workdir."""
        if self.reference is None:
            self.reference = reference_policy(self.workdir, self.name, state, step_in_phase)
        return self.reference

