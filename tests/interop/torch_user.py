"""What a PyTorch user runs on an export, in a fresh process: `python torch_user.py JOBS OUT`.

Imports only torch and transformers (HF_HUB_OFFLINE=1 is set by the caller) and checks at the end
that ling_jax was never imported. JOBS is a JSON list; each job loads one directory with the
one-line `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True[, dtype=...])` and
records what was asked for into OUT (an .npz, plus OUT.json for the non-array answers):
  logits_i / mtp_logits_i   fp32 logits of job["ids"] (uncached forward)
  expert_bias_i             the first MoE layer's expert_bias as loaded
  tokens_i                  greedy `generate(ids, do_sample=False)` (default arguments otherwise)
  batch_tokens (json)       greedy generate() of a left-padded batch, each row cut after EOS
"""

import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache


def run_job(i: int, job: dict, arrays: dict, answers: dict) -> None:
    kwargs = {"dtype": getattr(torch, job["dtype"])} if job.get("dtype") else {}
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True, **kwargs)
    model.eval()
    if job.get("to"):
        model.to(getattr(torch, job["to"]))
    config = model.config
    moe_layer = model.model.layers[config.first_k_dense_replace]
    arrays[f"expert_bias_{i}"] = moe_layer.mlp.gate.expert_bias.double().numpy()
    answer = {
        "param_dtype": str(model.lm_head.weight.dtype),
        "qkv_dtype": str(model.model.layers[0].attention.query_key_value.weight.dtype),
        "expert_bias_dtype": str(moe_layer.mlp.gate.expert_bias.dtype),
        "module": type(model).__module__,
    }
    with torch.no_grad():
        if job.get("ids") is not None:
            ids = torch.tensor(job["ids"])
            extra = {"output_mtp_logits": True} if job.get("mtp") else {}
            out = model(ids, use_cache=False, **extra)
            arrays[f"logits_{i}"] = out.logits.double().numpy()
            if job.get("mtp"):
                arrays[f"mtp_logits_{i}"] = out.mtp_logits.double().numpy()
        if job.get("prompt") is not None:
            tok = AutoTokenizer.from_pretrained(job["dir"])
            ids = tok(job["prompt"], return_tensors="pt").input_ids
            extra = {"past_key_values": DynamicCache()} if job.get("explicit_cache") else {}
            tokens = model.generate(ids, do_sample=False, **extra)[0, ids.shape[1]:]
            arrays[f"tokens_{i}"] = tokens.numpy()
            answer.update(
                prompt_ids=ids[0].tolist(), text=tok.decode(tokens, skip_special_tokens=True),
                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id, eos_token=tok.eos_token,
                generation_eos=model.generation_config.eos_token_id,
                round_trip=tok.decode(tok(job["prompt"]).input_ids) == job["prompt"])
        if job.get("batch") is not None:  # left-padded batch, as the tokenizer config says
            tok = AutoTokenizer.from_pretrained(job["dir"])
            enc = tok(job["batch"], return_tensors="pt", padding=True)
            rows = model.generate(**enc, do_sample=False)[:, enc.input_ids.shape[1]:]
            answer["batch_tokens"] = [r[: _stop(r, tok.eos_token_id)] for r in rows.tolist()]
            answer["padding_side"] = tok.padding_side
    answers[str(i)] = answer


def _stop(row: list[int], eos: int) -> int:
    """Length of a generated row up to and including its first EOS (the rest is padding)."""
    return row.index(eos) + 1 if eos in row else len(row)


def main(jobs_file: str, out_file: str) -> None:
    arrays, answers = {}, {}
    for i, job in enumerate(json.loads(open(jobs_file).read())):
        run_job(i, job, arrays, answers)
    answers["ling_jax_imported"] = any(m.split(".")[0] == "ling_jax" for m in sys.modules)
    np.savez(out_file, **arrays)
    with open(out_file + ".json", "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
