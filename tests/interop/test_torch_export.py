"""A PyTorch user's view of `export-hf`: every export loads offline with the one-line
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`, in a fresh process that never
imports ling_jax, and agrees with ling-jax, with the fixture, and with the upstream Ling code.

Each friction of issue 17 has an assertion here that failed before the fix: missing modeling
files, generate() crashing on the MTP layer, no tokenizer / AutoTokenizer failure, config.json's
eos/pad ids not the tokenizer's, a bf16 export loading as fp32 with a bf16 expert_bias, an FP8
export not loadable on CPU, a made-up transformers_version.
"""

import ast
import importlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from ling_jax.data.tokenizers import train_bpe
from ling_jax.interop import hf_export, hf_import
from ling_jax.interop.model_checkpoint import save_model
from ling_jax.model.decode import SamplingParams, generate_text_ids
from ling_jax.model.transformer import LingForCausalLM
from tests.conftest import SHARED
from tests.rl.rl_fixtures import small_model_config


def _need(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        msg = f"{module} is not installed (pip install -e .[torch])"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg, allow_module_level=True)


_need("torch")
_need("transformers")

UPSTREAM = SHARED / "reference" / "ling-v2-upstream"
USER_SCRIPT = os.path.join(os.path.dirname(__file__), "torch_user.py")
ENTRY = "from ling_jax.cli.main import run; run()"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "XLA_FLAGS": ""}
TEXTS = ["The cat sat on the mat and purred.", "Two plus three is five, said the owl.",
         "A red fox jumps over the lazy dog."]
PROMPT = "Two plus three"
BATCH = ["The cat", "A red fox jumps over", PROMPT]  # different lengths: left padding
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def upstream_dir() -> os.PathLike:
    if not (UPSTREAM / "modeling_bailing_moe_v2.py").is_file():
        msg = f"upstream Ling code not found at {UPSTREAM} (expected ../shared beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return UPSTREAM


def with_upstream_code(export, dst):
    """The export's files with the upstream modeling code in place of ours (same auto_map)."""
    shutil.copytree(export, dst)
    for name in hf_export.MODEL_CODE_FILES:
        shutil.copyfile(upstream_dir() / name, dst / name)
    return dst


def run_user(jobs: list[dict], tmp) -> tuple[dict, dict]:
    """Run torch_user.py offline, without ling_jax on the path, in a fresh process."""
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": "",
           "HF_MODULES_CACHE": str(tmp / "modules")}
    result = subprocess.run([sys.executable, USER_SCRIPT, tmp / "jobs.json", tmp / "out.npz"],
                            capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    answers = json.loads((tmp / "out.npz.json").read_text())
    assert answers.pop("ling_jax_imported") is False
    return dict(np.load(tmp / "out.npz")), answers


# ---------------------------------------------------------------------------------------------
# The fixture model, exported in every dtype, loaded one line at a time.


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train_bpe(TEXTS * 20, 300, root / "tokenizer.json", min_frequency=1)
    return root


@pytest.fixture(scope="module")
def exports(imported, tokenizer_dir, tmp_path_factory):
    """Unique directory names: transformers caches remote code per directory name."""
    model, cfg = imported
    root = tmp_path_factory.mktemp("exports")
    out = {
        "fp32": hf_export.export_hf(model, cfg, root / "ljx_fp32", dtype="float32",
                                    tokenizer_dir=tokenizer_dir, chat_template=CHAT_TEMPLATE),
        "sharded": hf_export.export_hf(model, cfg, root / "ljx_sharded", dtype="float32",
                                       max_shard_bytes=300_000),
        "bf16": hf_export.export_hf(model, cfg, root / "ljx_bf16", dtype="bfloat16"),
        "fp8": hf_export.export_hf(model, cfg, root / "ljx_fp8", dtype="fp8"),
    }
    # The CPU route from an FP8 checkpoint: import it and export bfloat16.
    fp8_model, fp8_cfg = hf_import.load_model(out["fp8"])
    out["fp8_to_bf16"] = hf_export.export_hf(fp8_model, fp8_cfg, root / "ljx_fp8_bf16",
                                             dtype="bfloat16")
    return out


@nnx.jit
def forward(model, ids):
    """One compile for every float32 import of the fixture (same graph, same shapes)."""
    out = model(ids)
    return out.logits, out.mtp_logits


def ling_jax_logits(hf_dir, ids) -> tuple[np.ndarray, np.ndarray]:
    model, _ = hf_import.load_model(hf_dir)  # float32, FP8 dequantised
    logits, mtp_logits = forward(model, jax.numpy.asarray(ids))
    return np.asarray(logits, np.float64), np.asarray(mtp_logits, np.float64)


@pytest.fixture(scope="module")
def reference(bailing_tiny_dir):
    return dict(np.load(bailing_tiny_dir / "reference.npz"))


@pytest.fixture(scope="module")
def loaded(exports, reference, tmp_path_factory):
    """Logits of every export under its one-line load (default args unless a dtype is named)."""
    ids = reference["input_ids"].tolist()
    upstream = with_upstream_code(exports["fp32"], tmp_path_factory.mktemp("up") / "ljx_up_fp32")
    jobs = {
        "fp32": dict(dir=str(exports["fp32"]), ids=ids, mtp=True),
        "sharded": dict(dir=str(exports["sharded"]), ids=ids),
        "bf16": dict(dir=str(exports["bf16"]), ids=ids),
        "bf16_as_fp32": dict(dir=str(exports["bf16"]), ids=ids, dtype="float32"),
        "bf16_to_bf16": dict(dir=str(exports["bf16"]), dtype="bfloat16", to="bfloat16"),
        "fp8": dict(dir=str(exports["fp8"])),
        "fp8_as_fp32": dict(dir=str(exports["fp8"]), ids=ids, dtype="float32"),
        "fp8_to_bf16_as_fp32": dict(dir=str(exports["fp8_to_bf16"]), ids=ids, dtype="float32"),
        "upstream_fp32": dict(dir=str(upstream), ids=ids, mtp=False),
    }
    arrays, answers = run_user(list(jobs.values()), tmp_path_factory.mktemp("user"))
    return {name: ({k.rsplit("_", 1)[0]: v for k, v in arrays.items()
                    if k.rsplit("_", 1)[1] == str(i)}, answers[str(i)])
            for i, name in enumerate(jobs)}


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_export_is_self_contained(exports):
    names = sorted(p.name for p in exports["fp32"].iterdir())
    assert names == sorted(["config.json", "model.safetensors", *hf_export.MODEL_CODE_FILES,
                            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                            "generation_config.json"])
    config = json.loads((exports["fp32"] / "config.json").read_text())
    for target in config["auto_map"].values():
        assert (exports["fp32"] / (target.split(".")[0] + ".py")).is_file(), target
    assert config["transformers_version"] == importlib.metadata.version("transformers")
    for name in hf_export.MODEL_CODE_FILES:  # the code imports torch/transformers, never ours
        tree = ast.parse((exports["fp32"] / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert imported <= {"__future__", "math", "dataclasses", "torch", "transformers"}, name


@pytest.mark.parametrize("name", ["fp32", "sharded"])
def test_one_line_fp32_load_matches_ling_jax(name, loaded, imported, reference):
    arrays, answer = loaded[name]
    assert answer["param_dtype"] == "torch.float32"
    assert answer["module"].endswith("modeling_bailing_moe_v2")
    ours = np.asarray(forward(imported[0], jax.numpy.asarray(reference["input_ids"]))[0],
                      np.float64)
    assert max_diff(arrays["logits"], ours) <= 1e-4
    assert max_diff(arrays["logits"], reference["logits"]) <= 1e-4
    assert (arrays["logits"].argmax(-1) == ours.argmax(-1)).all()
    assert (arrays["logits"].argmax(-1) == reference["logits"].argmax(-1)).all()
    if name == "fp32":
        assert max_diff(arrays["mtp_logits"], reference["mtp_logits"]) <= 1e-4


def test_upstream_code_agrees_on_the_same_weights(loaded):
    ours, upstream = loaded["fp32"][0]["logits"], loaded["upstream_fp32"][0]["logits"]
    assert loaded["upstream_fp32"][1]["module"].endswith("modeling_bailing_moe_v2")
    assert max_diff(ours, upstream) <= 1e-4
    assert (ours.argmax(-1) == upstream.argmax(-1)).all()


def test_bf16_export_loads_as_bf16_with_fp32_expert_bias(loaded, exports, reference,
                                                        bailing_tiny_dir):
    from tests.interop.hf_files import read_tensors

    bias = read_tensors(bailing_tiny_dir)["model.layers.1.mlp.gate.expert_bias"].double().numpy()
    for name, dtype in (("bf16", "torch.bfloat16"), ("bf16_as_fp32", "torch.float32"),
                        ("bf16_to_bf16", "torch.bfloat16")):
        arrays, answer = loaded[name]
        assert (answer["param_dtype"], answer["expert_bias_dtype"]) == (dtype, "torch.float32")
        np.testing.assert_array_equal(arrays["expert_bias"], bias)  # not rounded to bf16
    # The bf16-rounded weights computed in fp32: ling-jax's import of the same file agrees.
    ours, _ = ling_jax_logits(exports["bf16"], reference["input_ids"])
    logits = loaded["bf16_as_fp32"][0]["logits"]
    assert max_diff(logits, ours) <= 1e-4
    assert (logits.argmax(-1) == ours.argmax(-1)).all()


def test_fp8_export_loads_on_cpu_dequantised(loaded, exports, reference):
    assert loaded["fp8"][1]["param_dtype"] == "torch.bfloat16"  # torch_dtype of an FP8 export
    assert loaded["fp8"][1]["qkv_dtype"] == "torch.bfloat16"  # dequantised, not E4M3
    assert loaded["fp8"][1]["expert_bias_dtype"] == "torch.float32"
    for name, hf_dir in (("fp8_as_fp32", exports["fp8"]),
                         ("fp8_to_bf16_as_fp32", exports["fp8_to_bf16"])):
        ours, ours_mtp = ling_jax_logits(hf_dir, reference["input_ids"])
        logits = loaded[name][0]["logits"]
        assert max_diff(logits, ours) <= 1e-4, name
        assert (logits.argmax(-1) == ours.argmax(-1)).all(), name


def test_tokenizer_files_and_ids(exports, tokenizer_dir):
    out = exports["fp32"]
    config = json.loads((out / "config.json").read_text())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    # train_bpe puts <|endoftext|>, <|startoftext|>, <|pad|> first: EOS 0, BOS 1, pad 2.
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (0, 1, 2)
    assert {k: generation[k] for k in ("eos_token_id", "bos_token_id", "pad_token_id")} == {
        "eos_token_id": 0, "bos_token_id": 1, "pad_token_id": 2}
    assert (tok_config["eos_token"], tok_config["bos_token"], tok_config["pad_token"]) == (
        "<|endoftext|>", "<|startoftext|>", "<|pad|>")
    assert tok_config["chat_template"] == CHAT_TEMPLATE
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("kwargs, match", [
    (dict(chat_template="{{ x }}"), "needs a tokenizer"),
    (dict(tokenizer_dir="/nonexistent/tok"), "tokenizer directory"),
])
def test_tokenizer_arguments_are_checked_first(imported, tmp_path, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        hf_export.export_hf(*imported, tmp_path / "hf", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# A briefly trained model: greedy generate() in transformers = ling-jax's, stopping at EOS.


def train_briefly(model, ids_BT, steps: int = 60) -> float:
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, ids):
        def loss_fn(m):
            logits = m(ids).logits[:, :-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(steps):
        loss = step(model, optimizer, ids_BT)
    return float(loss)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """<root>/final_model (+ tokenizer.json, as a train run writes it) and its greedy output."""
    root = tmp_path_factory.mktemp("trained")
    tokenizer = train_bpe(TEXTS * 20, 300, min_frequency=1)
    cfg = small_model_config()
    cfg.vocab_size = 320
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    row = [i for text in TEXTS for i in [*tokenizer.encode(text), tokenizer.eos_id]]
    loss = train_briefly(model, jax.numpy.asarray([row * 2]))
    assert loss < 0.5, loss
    save_model(root / "final_model", model, cfg)
    tokenizer.save(root / "final_model" / "tokenizer.json")
    sampling = SamplingParams(temperature=0.0, stop_ids=(tokenizer.eos_id,),
                              pad_id=tokenizer.pad_id)
    prompt_ids = tokenizer.encode(PROMPT)
    ids = generate_text_ids(model, [prompt_ids], jax.random.key(0), max_new_tokens=64,
                            sampling=sampling)[0]
    batch = [tokenizer.encode(text) for text in BATCH]
    batch_ids = generate_text_ids(model, batch, jax.random.key(0), max_new_tokens=64,
                                  sampling=sampling)
    return root, tokenizer, prompt_ids, ids, batch_ids


@pytest.fixture(scope="module")
def generated(trained, tmp_path_factory):
    root = trained[0]
    out = root / "ljx_trained"
    result = subprocess.run([sys.executable, "-c", ENTRY, "export-hf", "--checkpoint",
                             root / "final_model", "--out", out, "--dtype", "float32"],
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    upstream = with_upstream_code(out, root / "ljx_up_trained")
    jobs = [dict(dir=str(out), prompt=PROMPT, batch=BATCH),
            dict(dir=str(upstream), prompt=PROMPT, explicit_cache=True)]
    arrays, answers = run_user(jobs, tmp_path_factory.mktemp("user_gen"))
    return out, [(arrays[f"tokens_{i}"], answers[str(i)]) for i in range(len(jobs))]


def test_default_greedy_generate_matches_ling_jax_and_stops_at_eos(trained, generated):
    _, tokenizer, prompt_ids, ours, _ = trained
    _, [(tokens, answer), (upstream_tokens, _)] = generated
    assert answer["prompt_ids"] == prompt_ids  # AutoTokenizer encodes like ling-jax
    assert answer["round_trip"]
    assert len(ours) < 60  # the trained model ends its answer well before the length limit
    assert tokens.tolist() == [*ours, tokenizer.eos_id]  # same tokens, then EOS, then stop
    assert answer["text"] == tokenizer.decode(ours) and answer["text"].strip()
    assert upstream_tokens.tolist() == tokens.tolist()  # the upstream code (cache passed in)
    assert answer["eos_token_id"] == answer["generation_eos"] == tokenizer.eos_id == 0
    assert (answer["bos_token_id"], answer["pad_token_id"]) == (1, 2)


def test_left_padded_batch_generate_matches_ling_jax(trained, generated):
    _, tokenizer, _, _, batch_ids = trained
    _, [(_, answer), _] = generated
    assert answer["padding_side"] == "left"
    eos = tokenizer.eos_id
    assert answer["batch_tokens"] == [[*row, eos] if len(row) < 64 else row for row in batch_ids]


def test_cli_exports_the_run_tokenizer_by_default(generated):
    out, _ = generated
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["torch_dtype"]) == (
        0, 2, "float32")


@pytest.mark.slow
def test_short_colab_tiny_run_exports_and_generates_like_ling_jax(tmp_path):
    """The acceptance path: a shortened `ling-jax train` of experiments/colab_tiny.py, then
    `export-hf` with no tokenizer flag; default greedy generate() in transformers prints the text
    `ling-jax generate` prints (same default length, same EOS)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    config = tmp_path / "short.py"
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(root / 'experiments')!r})\n"
        "import colab_tiny\n"
        "from ling_jax.train.experiment import with_phase_defaults\n\n"
        "def get_config():\n"
        "    cfg = colab_tiny.get_config()\n"
        "    for name, steps in (('pretrain', 10), ('midtrain', 30)):\n"
        "        cfg.phases[name].steps, cfg.phases[name].lr.warmup_steps = steps, 2\n"
        "    rl = colab_tiny.rl_phase(steps=2)\n"
        "    rl.update(batch_size=4, lr=dict(rl['lr'], warmup_steps=1))\n"
        "    rl['rl'].update(eval_problems=16)\n"
        "    cfg.phases.rl = with_phase_defaults(rl)\n"
        "    return cfg\n")
    workdir, out = tmp_path / "run", tmp_path / "ljx_colab_export"

    def cli(*args):
        result = subprocess.run([sys.executable, "-c", ENTRY, *map(str, args)], cwd=root,
                                capture_output=True, text=True, env=ENV, timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    cli("train", "--config", config, f"--workdir={workdir}")
    cli("export-hf", "--checkpoint", workdir / "final_model", "--out", out, "--dtype", "float32")
    prompt = ("Question: Ann has 3 apples. Then Ann finds 4 more. How many apples does Ann have "
              "now?\nAnswer:\n")
    printed = cli("generate", "--checkpoint", workdir / "final_model", "--prompt", prompt)
    arrays, answers = run_user([dict(dir=str(out), prompt=prompt)], tmp_path)
    assert printed.split("\n" + "-" * 40)[0] == prompt + answers["0"]["text"]
    tokens = arrays["tokens_0"].tolist()
    assert answers["0"]["eos_token_id"] == 0 == answers["0"]["generation_eos"]
    assert len(tokens) == 64 or tokens[-1] == 0  # stopped at EOS or at the default length
