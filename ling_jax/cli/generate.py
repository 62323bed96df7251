"""`ling-jax generate (--checkpoint CKPT | --hf DIR) --prompt "..." [--max_new_tokens N ...]`.

Samples with the KV-cache decoder (ling_jax.model.decode): greedy by default (--temperature 0),
else temperature / top-p / top-k sampling with --seed. The tokenizer is --tokenizer (a
tokenizer.json or a directory holding one), else the tokenizer.json of the HF directory, else one
beside the model checkpoint (in it or its parent directory). Generation stops at the tokenizer's
end-of-text token or after --max_new_tokens.

--chat: each --prompt is a user turn (after --system and the --tools schemas, a JSON list file),
rendered with the chat template exactly as the sft phase trains (ling_jax.data.chat_template);
the reply stops at the template's end of turn. The template is --chat_template (a preset name
or a JSON file of template fields), else the chat_template.json an sft run writes in its workdir
(found beside the checkpoint: in it or its parent directory, or in the HF directory), else the
"ling" preset.
"""

from __future__ import annotations

import pathlib

from absl import flags, logging

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_HF = DEFINE_path("hf", None, "HF checkpoint directory")
_CHECKPOINT = DEFINE_path("checkpoint", None, "model checkpoint directory")
_TOKENIZER = DEFINE_path("tokenizer", None, "tokenizer.json (or a directory holding one)")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "prompt text (repeat for a batch)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate at most")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens (0 = off)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "samples per prompt")
_CHAT = flags.DEFINE_bool("chat", False, "render each --prompt as a user turn of the chat "
                          "template and stop at the end of the assistant's turn")
_SYSTEM = flags.DEFINE_string("system", None, "--chat: a system message")
_TOOLS = DEFINE_path("tools", None, "--chat: a JSON file holding a list of tool schemas")
_CHAT_TEMPLATE = flags.DEFINE_string("chat_template", None,
                                     "--chat: a preset name (ling, compact) or a JSON file of "
                                     "template fields; default: the run's chat_template.json")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "parameter and compute dtype (router, norms, softmax stay fp32)")
_ATTENTION = flags.DEFINE_string("attention_backend", None,
                                 "prefill attention backend, e.g. tiled for long prompts on CPU "
                                 "(memory linear in the prompt length); default: the model's")


def _run_files(name: str, hf_dir: str | None, checkpoint: str | None) -> list[pathlib.Path]:
    """Where a run keeps `name`: in the HF directory, or in / beside the model checkpoint (a train
    run's final_model sits in the workdir)."""
    files = [pathlib.Path(hf_dir) / name] if hf_dir else []
    if checkpoint:
        path = pathlib.Path(checkpoint).absolute()
        files += [path / name, path.parent / name]
    return files


def find_tokenizer(explicit: str | None, hf_dir: str | None, checkpoint: str | None):
    """The tokenizer to use (see the module doc); ValueError says where it looked."""
    from ling_jax.data.tokenizers import load_tokenizer

    if explicit:
        return load_tokenizer(explicit)
    candidates = _run_files("tokenizer.json", hf_dir, checkpoint)
    for file in candidates:
        if file.is_file():
            return load_tokenizer(file)
    raise ValueError(f"no tokenizer.json found (looked at {[str(c) for c in candidates]}); "
                     "pass --tokenizer PATH")


def find_chat_template(explicit: str | None, hf_dir: str | None, checkpoint: str | None):
    """The chat template for --chat (see the module doc)."""
    import json

    from ling_jax.data.chat_encoding import read_template
    from ling_jax.data.chat_template import chat_template

    if explicit:  # a preset name or a JSON file of fields
        return read_template(explicit)
    for file in _run_files("chat_template.json", hf_dir, checkpoint):
        if file.is_file():
            return chat_template(json.loads(file.read_text()))
    return chat_template(None)


def chat_prompts(tokenizer, template, prompts: list[str]) -> list[list[int]]:
    """Ids of each prompt as a user turn (after --system and --tools), ready for the reply."""
    import json

    from ling_jax.data.chat_encoding import encode_prompt

    tools = None
    if _TOOLS.value:
        tools = json.loads(pathlib.Path(_TOOLS.value).read_text())
        if not isinstance(tools, list):
            raise ValueError(f"--tools: {_TOOLS.value} must hold a JSON list of tool schemas")
    system = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
    return [encode_prompt(tokenizer, template, [*system, {"role": "user", "content": p}], tools)
            for p in prompts]


def _check_flags(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if bool(_HF.value) == bool(_CHECKPOINT.value):
        raise ValueError("give exactly one of --hf DIR or --checkpoint CKPT")
    if not _PROMPT.value:
        raise ValueError('--prompt "..." is required')
    if not _CHAT.value and (_SYSTEM.value or _TOOLS.value or _CHAT_TEMPLATE.value):
        raise ValueError("--system, --tools and --chat_template need --chat")
    if _TOOLS.value and not pathlib.Path(_TOOLS.value).is_file():
        raise FileNotFoundError(f"--tools: file {_TOOLS.value} not found")
    if _MAX_NEW.value < 1 or _NUM_SAMPLES.value < 1:
        raise ValueError("--max_new_tokens and --num_samples must be >= 1")
    for flag, path in (("--hf", _HF.value), ("--checkpoint", _CHECKPOINT.value)):
        if path and not pathlib.Path(path).is_dir():
            raise FileNotFoundError(f"{flag}: directory {path} not found")


def _read_config(runtime: dict):
    """The model config (checked to fit in memory) before anything is loaded."""
    from ling_jax.interop import hf_import, model_checkpoint

    if _HF.value:
        return hf_import.read_config(_HF.value, **runtime)
    return model_checkpoint.read_model_config(_CHECKPOINT.value, **runtime)


def check_lengths(cfg, encoded: list[list[int]], max_new_tokens: int) -> None:
    """Longest prompt + new tokens within the model's positions; the KV cache within memory."""
    from ling_jax.config.budget import check_kv_cache_fits, check_length

    longest = max(len(ids) for ids in encoded)
    check_length(cfg, longest, max_new_tokens)
    check_kv_cache_fits(cfg, len(encoded), longest + max_new_tokens)


def _load_model(runtime: dict):
    from ling_jax.interop import hf_import, model_checkpoint

    if _HF.value:
        return hf_import.load_model(_HF.value, **runtime)
    return model_checkpoint.load_model(_CHECKPOINT.value, **runtime)


@user_errors_exit
def main(argv) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore step at INFO
    _check_flags(argv)
    from ling_jax.model.decode import SamplingParams

    tokenizer = find_tokenizer(_TOKENIZER.value, _HF.value, _CHECKPOINT.value)
    prompts = [p for p in _PROMPT.value for _ in range(_NUM_SAMPLES.value)]
    stops, template = (int(tokenizer.eos_id),), None
    if _CHAT.value:
        from ling_jax.data.chat_encoding import stop_ids

        template = find_chat_template(_CHAT_TEMPLATE.value, _HF.value, _CHECKPOINT.value)
        encoded, stops = chat_prompts(tokenizer, template, prompts), stop_ids(tokenizer, template)
    else:
        encoded = [tokenizer.encode(p) for p in prompts]
    sampling = SamplingParams(temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                              top_k=_TOP_K.value, stop_ids=stops,
                              pad_id=int(tokenizer.pad_id if tokenizer.pad_id is not None
                                         else tokenizer.eos_id))
    if any(not ids for ids in encoded):
        raise ValueError("--prompt: a prompt encodes to no tokens; give some text")
    runtime = dict(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
    if _ATTENTION.value:
        runtime["attention_backend"] = _ATTENTION.value
    cfg = _read_config(runtime)
    top = max(max(ids) for ids in encoded)
    if top >= cfg.vocab_size:
        raise ValueError(f"the tokenizer produced id {top} >= the model's vocab_size "
                         f"{cfg.vocab_size}; pass the model's own --tokenizer")
    check_lengths(cfg, encoded, _MAX_NEW.value)
    model, cfg = _load_model(runtime)
    for prompt, text in zip(prompts, generate_texts(model, tokenizer, encoded, sampling),
                            strict=True):
        if template is not None:
            from ling_jax.data.chat_encoding import cut_at_end_of_turn

            print(f"user: {prompt}\nassistant: {cut_at_end_of_turn(text, template)}")
        else:
            print(prompt + text)
        print("-" * 40)


def generate_texts(model, tokenizer, encoded: list[list[int]], sampling) -> list[str]:
    """Decoded continuations of `encoded` prompts (stop token dropped)."""
    import jax

    from ling_jax.model.decode import generate_text_ids

    ids = generate_text_ids(model, encoded, jax.random.key(_SEED.value),
                            max_new_tokens=_MAX_NEW.value, sampling=sampling)
    return [tokenizer.decode(row) for row in ids]
