"""`ling-jax import-hf / export-hf / logits` end to end in subprocesses, good and bad inputs.

Each bad input must exit non-zero with one stderr line naming the key/field, and create nothing.
Subprocesses of one test run concurrently (each costs ~4 s of interpreter and JAX start-up).
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.interop.hf_files import read_tensors

ENTRY = "from ling_jax.cli.main import run; run()"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "XLA_FLAGS": ""}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=600)


def run_all(commands: list[tuple]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args), commands))


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("ling-jax: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def reference(bailing_tiny_dir):
    return dict(np.load(bailing_tiny_dir / "reference.npz"))


@pytest.fixture(scope="module")
def checkpoint(bailing_tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    result = cli("import-hf", "--hf", bailing_tiny_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model_config.json", "model_state"]
    return out


def test_console_script_is_installed():
    script = shutil.which("ling-jax") or os.path.join(os.path.dirname(sys.executable), "ling-jax")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0 and "import-hf" in result.stdout


def test_logits_from_checkpoint_and_hf_match_fixture(checkpoint, bailing_tiny_dir, reference,
                                                     tmp_path):
    np.save(tmp_path / "ids.npy", reference["input_ids"])
    np.save(tmp_path / "row.npy", reference["input_ids"][1].astype(np.uint16))  # [T] form
    results = run_all([
        ("logits", "--checkpoint", checkpoint, "--tokens", tmp_path / "ids.npy",
         "--out", tmp_path / "ckpt.npz"),
        ("logits", "--hf", bailing_tiny_dir, "--tokens", tmp_path / "row.npy",
         "--out", tmp_path / "hf.npz", "--moe_backend", "dense"),
    ])
    for result in results:
        assert result.returncode == 0, result.stderr
    for name, rows in (("ckpt", slice(None)), ("hf", slice(1, 2))):
        out = np.load(tmp_path / f"{name}.npz")
        assert sorted(out.files) == ["logits", "mtp_logits"]
        assert out["logits"].dtype == out["mtp_logits"].dtype == np.float32
        assert out["mtp_logits"].shape == (1, *out["logits"].shape)
        np.testing.assert_allclose(out["logits"], reference["logits"][rows], rtol=0, atol=1e-4)
        np.testing.assert_allclose(out["mtp_logits"], reference["mtp_logits"][:, rows], rtol=0,
                                   atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "hf.npz", "ids.npy",
                                                          "row.npy"]


def test_export_hf_cli_round_trips(checkpoint, bailing_tiny_dir, tmp_path):
    from ling_jax.data.tokenizers import train_bpe

    tok = tmp_path / "tok"
    train_bpe(["one two three"] * 10, 270, tok / "tokenizer.json", min_frequency=1)
    out = tmp_path / "hf"
    result = cli("export-hf", "--checkpoint", checkpoint, "--out", out, "--dtype", "float32",
                 "--max_shard_size", "400KB", "--tokenizer", tok)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors.index.json").exists()
    assert (out / "tokenizer.json").read_text() == (tok / "tokenizer.json").read_text()
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    ours, ref = read_tensors(out), read_tensors(bailing_tiny_dir)
    assert sorted(ours) == sorted(ref)
    assert all(ours[k].dtype == ref[k].dtype and bool((ours[k] == ref[k]).all()) for k in ref)
    # HF → checkpoint → HF keeps the tokenizer files without any flag.
    back = tmp_path / "ckpt"
    assert cli("import-hf", "--hf", out, "--out", back).returncode == 0
    again = tmp_path / "again"
    result = cli("export-hf", "--checkpoint", back, "--out", again)
    assert result.returncode == 0, result.stderr
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        assert (again / name).read_text() == (out / name).read_text(), name


def _mutant(src, dst, *, tensors=None, config=None):
    """A copy of the fixture with its tensors and/or config.json changed."""
    dst.mkdir()
    weights = load_file(src / "model.safetensors")
    if tensors:
        tensors(weights)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    if config:
        config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_import_hf_rejects_bad_checkpoints(bailing_tiny_dir, tmp_path):
    src = bailing_tiny_dir
    drop = "model.layers.2.mlp.experts.7.up_proj.weight"
    cases = {
        "missing": (_mutant(src, tmp_path / "missing", tensors=lambda w: w.pop(drop)), [drop]),
        "extra": (_mutant(src, tmp_path / "extra", tensors=lambda w: w.update(
            {"model.layers.1.mlp.gate.bias": np.ones(16, np.float32)})),
            ["model.layers.1.mlp.gate.bias"]),
        "shape": (_mutant(src, tmp_path / "shape", tensors=lambda w: w.update(
            {"model.norm.weight": np.ones(65, np.float32)})), ["model.norm.weight", "(65,)"]),
        "heads": (_mutant(src, tmp_path / "heads", config=lambda c: c.update(
            num_attention_heads=3)), ["num_attention_heads", "num_key_value_heads=2"]),
        "groups": (_mutant(src, tmp_path / "groups", config=lambda c: c.update(topk_group=5)),
                   ["topk_group"]),
    }
    truncated = shutil.copytree(src, tmp_path / "truncated")
    data = (src / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").chmod(0o644)
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated, ["model.safetensors", "truncated"])
    broken = shutil.copytree(src, tmp_path / "json")
    (broken / "config.json").chmod(0o644)
    (broken / "config.json").write_text('{"hidden_size": 64,')
    cases["json"] = (broken, ["config.json", "invalid JSON"])
    cases["absent"] = (tmp_path / "absent", ["absent", "not found"])
    outs = {name: tmp_path / f"out_{name}" for name in cases}
    results = run_all([("import-hf", "--hf", d, "--out", outs[n]) for n, (d, _) in cases.items()])
    for (name, (_, needles)), result in zip(cases.items(), results, strict=True):
        assert_one_line_error(result, *needles)
        assert not outs[name].exists(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs


def test_logits_rejects_bad_inputs(checkpoint, bailing_tiny_dir, reference, tmp_path):
    ids = reference["input_ids"]
    too_big, negative = ids.copy(), ids.copy()
    too_big[1, 5] = 700
    negative[0, 0] = -3
    arrays = {"ids": ids, "big": too_big, "neg": negative, "float": ids.astype(np.float32),
              "cube": ids[None], "empty": np.zeros((2, 0), np.int64)}
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
    (tmp_path / "junk.npy").write_text("not an array")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ids.npy").read_bytes()[:200])
    out = tmp_path / "out.npz"
    common = ("--out", out)
    ckpt, hf = ("--checkpoint", checkpoint), ("--hf", bailing_tiny_dir)
    cases = [
        ((*ckpt, "--tokens", tmp_path / "big.npy"), ["token id 700", "vocab_size=512"]),
        ((*hf, "--tokens", tmp_path / "neg.npy"), ["token id -3", "vocab_size=512"]),
        ((*ckpt, "--tokens", tmp_path / "float.npy"), ["--tokens", "float32", "integer"]),
        ((*ckpt, "--tokens", tmp_path / "cube.npy"), ["--tokens", "(1, 2, 24)"]),
        ((*ckpt, "--tokens", tmp_path / "empty.npy"), ["--tokens", "(2, 0)"]),
        ((*ckpt, "--tokens", tmp_path / "junk.npy"), ["--tokens", "not a .npy array"]),
        ((*ckpt, "--tokens", tmp_path / "cut.npy"), ["--tokens", "cut.npy", "not a readable"]),
        ((*ckpt, "--tokens", tmp_path / "absent.npy"), ["--tokens", "absent.npy", "not found"]),
        (("--checkpoint", tmp_path / "nockpt", "--tokens", tmp_path / "big.npy"),
         ["--checkpoint", "nockpt", "not found"]),
        ((*ckpt, *hf, "--tokens", tmp_path / "big.npy"), ["exactly one of --hf"]),
        ((*ckpt, "--tokens", tmp_path / "big.npy", "--dtype", "float16"), ["--dtype", "float16"]),
        ((*ckpt, "--tokens", tmp_path / "ids.npy", "--out", tmp_path / "no" / "x.npz"),
         ["--out", "does not exist"]),
    ]
    results = run_all([("logits", *common, *args) for args, _ in cases])  # later flags win
    for (_, needles), result in zip(cases, results, strict=True):
        assert_one_line_error(result, *needles)
    assert not out.exists() and not (tmp_path / "no").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_hf_rejects_bad_inputs(checkpoint, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("old")
    out = tmp_path / "hf"
    cases = [
        (("--checkpoint", checkpoint, "--out", taken), ["taken", "not empty"]),
        (("--checkpoint", tmp_path / "nockpt", "--out", out), ["nockpt", "not found"]),
        (("--checkpoint", checkpoint, "--out", out, "--dtype", "int8"), ["dtype 'int8'"]),
        (("--checkpoint", checkpoint, "--out", out, "--max_shard_size", "5 parsecs"),
         ["--max_shard_size"]),
        (("--checkpoint", checkpoint, "--out", out, "--tokenizer", tmp_path / "notok"),
         ["tokenizer directory", "notok"]),
        (("--checkpoint", checkpoint, "--out", out, "--no_tokenizer", "--chat_template",
          tmp_path / "t.jinja"), ["--no_tokenizer contradicts"]),
        (("--checkpoint", checkpoint, "--out", out, "--chat_template", tmp_path / "none.jinja"),
         ["--chat_template", "none.jinja", "not found"]),
    ]
    results = run_all([("export-hf", *args) for args, _ in cases])
    for (_, needles), result in zip(cases, results, strict=True):
        assert_one_line_error(result, *needles)
    assert not out.exists()
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
