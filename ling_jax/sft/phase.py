"""The `sft` phase kind: next-token training on chat conversations (assistant turns only), with
held-out tool-call accuracy measured on the incoming policy and at the end of the phase.

It is the LM phase (train/phases.py) with two differences: its data renders conversations with
the experiment's chat template (`tokenizer.chat_template`; the data block may not set its own, so
training, evaluation and generation render alike), and each step may first score the built-in
held-out tool-call examples greedily (sft/evaluation.py). The phase-start results travel in the
data state, so a resumed run still reports before/after. The template's fields are written to
WORKDIR/chat_template.json for `ling-jax generate --chat`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax

from ling_jax.data.chat_encoding import stop_ids
from ling_jax.data.chat_template import ChatTemplate, chat_template
from ling_jax.data.tool_calls import tool_call_examples
from ling_jax.model.decode import SamplingParams, make_generate_fn
from ling_jax.sft.config import validate_sft_phase
from ling_jax.sft.evaluation import (
    accuracy_metrics,
    encode_examples,
    greedy_outcomes,
    tool_call_change,
)
from ling_jax.train.experiment import ExperimentError
from ling_jax.train.phases import LMPhase, PhaseContext, phase_graphdef

TEMPLATE_FILE = "chat_template.json"


def write_template(workdir: pathlib.Path, template: ChatTemplate) -> None:
    """WORKDIR/chat_template.json: the template's fields (atomic)."""
    path = pathlib.Path(workdir) / TEMPLATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(template), indent=1) + "\n")
    os.replace(tmp, path)


class SFTPhase(LMPhase):
    """PhaseRunner of kind "sft" (see ling_jax.sft.config for the `sft` block)."""

    @staticmethod
    def validate(name: str, phase, cfg) -> None:
        try:
            validate_sft_phase(name, phase, cfg)
        except ValueError as e:
            raise ExperimentError(str(e)) from None
        if phase.data.get("chat_template", None) is not None:
            raise ExperimentError(f"phases.{name}.data.chat_template: an sft phase renders with "
                                  "tokenizer.chat_template; set that instead")

    def __init__(self, ctx: PhaseContext, name: str, phase):
        exp, tok = ctx.experiment, ctx.tokenizer
        self.sft = validate_sft_phase(name, phase, exp)
        self.template = chat_template(exp.tokenizer.get("chat_template", None))
        phase = phase.copy_and_resolve_references()
        phase.data.chat_template = dataclasses.asdict(self.template)
        super().__init__(ctx, name, phase)
        self.pad_id = int(tok.pad_id if tok.pad_id is not None else tok.eos_id)
        self.examples = tool_call_examples("heldout", self.sft["eval_problems"],
                                           seed=self.sft["eval_seed"],
                                           num_tools=self.sft["eval_num_tools"])
        if self.examples:
            self._prepare_eval(tok)
        self.cursor = 0  # steps done in this phase
        self.heldout_start: list[int] | None = None
        if ctx.workdir is not None and ctx.process_index == 0:
            write_template(ctx.workdir, self.template)

    def _prepare_eval(self, tok) -> None:
        ids, lengths = encode_examples(tok, self.template, self.examples, self.pad_id)
        new = self.sft["max_new_tokens"]
        if ids.shape[1] + new > self.model_cfg.max_position_embeddings:
            raise ValueError(f"tool-call prompts of {ids.shape[1]} tokens + max_new_tokens={new} "
                             f"exceed max_position_embeddings={self.model_cfg.max_position_embeddings}")
        self.prompt_ids, self.prompt_lengths = jax.numpy.asarray(ids), jax.numpy.asarray(lengths)
        sampling = SamplingParams(0.0, stop_ids=stop_ids(tok, self.template), pad_id=self.pad_id)
        self._greedy = make_generate_fn(phase_graphdef(self.model_cfg), max_new_tokens=new,
                                        sampling=sampling)
        self._tokenizer = tok

    def evaluate(self, state: dict, suffix: str = "") -> dict:
        """Held-out tool-call accuracy metrics of `state`'s policy."""
        outcomes, _ = greedy_outcomes(self._greedy, state["params"], state["biases"],
                                      self._tokenizer, self.prompt_ids, self.prompt_lengths,
                                      self.examples, self.template, self.sft["max_new_tokens"])
        return accuracy_metrics(outcomes, suffix)

    def step(self, state: dict) -> tuple[dict, dict]:
        every, extra = self.sft["eval_every"], {}
        if self.examples and (self.cursor == 0 or (every and self.cursor % every == 0)):
            extra = {**self.evaluate(state), "tool_call_steps": self.cursor}
            if self.cursor == 0:
                self.heldout_start = extra["tool_call_correct"]
        state, metrics = super().step(state)
        self.cursor += 1
        if self.examples and self.cursor == self.steps:
            extra.update(self.evaluate(state, "_end"))
            if self.heldout_start is not None:
                extra.update(tool_call_change(self.heldout_start, extra["tool_call_correct_end"]))
        return state, {**metrics, **extra}

    def data_state(self) -> dict:
        return {"pipeline": super().data_state(), "sft_step": self.cursor,
                "heldout_start": self.heldout_start}

    def set_data_state(self, state: dict) -> None:
        super().set_data_state(state["pipeline"])
        self.cursor = int(state["sft_step"])
        self.heldout_start = state.get("heldout_start")
