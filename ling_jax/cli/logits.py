"""`ling-jax logits (--hf DIR | --checkpoint CKPT) --tokens IDS.npy --out OUT.npz`.

Writes `logits` [B,T,V] and `mtp_logits` [n_mtp,B,T,V] as float32. Every input is checked (paths,
config, token dtype/shape/range) before the model is loaded or compiled.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from absl import flags, logging

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_HF = DEFINE_path("hf", None, "HF checkpoint directory")
_CHECKPOINT = DEFINE_path("checkpoint", None, "model checkpoint directory")
_TOKENS = DEFINE_path("tokens", None, ".npy integer array of token ids, [B,T] or [T]")
_OUT = DEFINE_path("out", None, ".npz file to write (logits, mtp_logits)")
_DTYPES = ("float32", "bfloat16")
_DTYPE = flags.DEFINE_string("dtype", "float32",
                           "parameter and compute dtype (router, norms, softmax stay fp32)")
_MOE_BACKEND = flags.DEFINE_string("moe_backend", None, "expert-compute backend (default: config)")


def read_tokens(path: str) -> np.ndarray:
    """[B,T] int32 token ids from a .npy file; errors name the file and the problem."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--tokens: {file} not found")
    with open(file, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # np.load would try pickle or zip and report that instead
        raise ValueError(f"--tokens {file}: not a .npy array (save one with numpy.save)")
    try:
        tokens = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"--tokens {file}: not a readable .npy array ({e})") from None
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"--tokens {file}: dtype {tokens.dtype} is not an integer type")
    if tokens.ndim not in (1, 2) or tokens.size == 0:
        raise ValueError(f"--tokens {file}: shape {tokens.shape}; expected a non-empty [B,T] or "
                         "[T] array")
    return tokens.reshape(1, -1) if tokens.ndim == 1 else tokens


def check_token_range(tokens: np.ndarray, vocab_size: int) -> None:
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"--tokens: token id {bad} (min {lo}, max {hi}) is outside the vocabulary "
                         f"[0, vocab_size={vocab_size})")


def check_tokens(tokens: np.ndarray, cfg) -> None:
    """Ids inside the vocabulary and a length the model's positions cover."""
    from ling_jax.config.budget import check_length

    check_token_range(tokens, cfg.vocab_size)
    check_length(cfg, tokens.shape[1])


def _check_out(path: str) -> pathlib.Path:
    out = pathlib.Path(path).absolute()
    if out.is_dir():
        raise IsADirectoryError(f"--out: {out} is a directory; give a .npz file path")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: directory {out.parent} does not exist")
    return out


def _write_npz(out: pathlib.Path, **arrays: np.ndarray) -> None:
    """Atomic: a temporary file in the same directory, renamed over `out`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def forward_logits(model, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B,T,V], mtp_logits [n_mtp,B,T,V]) as float32 numpy, one jit."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids):
        out = nnx.merge(graphdef, state)(ids)
        return out.logits, out.mtp_logits

    logits, mtp_logits = run(state, jax.numpy.asarray(tokens, jax.numpy.int32))
    return np.asarray(logits, np.float32), np.asarray(mtp_logits, np.float32)


@user_errors_exit
def main(argv) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore step at INFO
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if bool(_HF.value) == bool(_CHECKPOINT.value):
        raise ValueError("give exactly one of --hf DIR or --checkpoint CKPT")
    if not _TOKENS.value or not _OUT.value:
        raise ValueError("--tokens IDS.npy and --out OUT.npz are both required")
    if _DTYPE.value not in _DTYPES:
        raise ValueError(f"--dtype {_DTYPE.value!r} is not one of {list(_DTYPES)}")
    tokens = read_tokens(_TOKENS.value)
    out = _check_out(_OUT.value)
    from ling_jax.interop import hf_import, model_checkpoint

    runtime = dict(dtype=_DTYPE.value, param_dtype=_DTYPE.value)
    if _MOE_BACKEND.value:
        runtime["moe_backend"] = _MOE_BACKEND.value
    if _HF.value:
        if not pathlib.Path(_HF.value).is_dir():
            raise FileNotFoundError(f"--hf: directory {_HF.value} not found")
        cfg = hf_import.read_config(_HF.value, **runtime)
        check_tokens(tokens, cfg)
        model, cfg = hf_import.load_model(_HF.value, **runtime)
    else:
        if not pathlib.Path(_CHECKPOINT.value).is_dir():
            raise FileNotFoundError(f"--checkpoint: directory {_CHECKPOINT.value} not found")
        cfg = model_checkpoint.read_model_config(_CHECKPOINT.value, **runtime)
        check_tokens(tokens, cfg)
        model, cfg = model_checkpoint.load_model(_CHECKPOINT.value, **runtime)
    logits, mtp_logits = forward_logits(model, tokens)
    _write_npz(out, logits=logits, mtp_logits=mtp_logits)
    print(f"wrote {out}: logits {logits.shape}, mtp_logits {mtp_logits.shape}")
