"""`ling-jax import-hf --hf DIR --out CKPT`: a HF Ling 2.0 directory → model checkpoint.

The HF directory's tokenizer files are kept beside the model state, so `ling-jax generate
--checkpoint CKPT` and `ling-jax export-hf --checkpoint CKPT` find them.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from absl import flags, logging

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_HF = DEFINE_path("hf", None, "HF checkpoint directory (config.json + safetensors)")
_OUT = DEFINE_path("out", None, "model checkpoint directory to create")
_DTYPES = ("auto", "float32", "bfloat16")
_DTYPE = flags.DEFINE_string("dtype", "auto",
                           "stored parameter dtype; auto = the checkpoint's torch_dtype "
                           "(FP8 → bfloat16)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a non-empty --out directory")


def _param_dtype(hf_dir: pathlib.Path, choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        torch_dtype = json.loads((hf_dir / "config.json").read_text()).get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        torch_dtype = None  # read_config reports the problem with its file and field
    return "float32" if torch_dtype == "float32" else "bfloat16"


@user_errors_exit
def main(argv) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore step at INFO
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not _HF.value or not _OUT.value:
        raise ValueError("--hf DIR and --out CKPT are both required")
    if _DTYPE.value not in _DTYPES:
        raise ValueError(f"--dtype {_DTYPE.value!r} is not one of {list(_DTYPES)}")
    # Heavy imports after flag checks, so usage errors answer at once.
    from ling_jax.interop import hf_import, model_checkpoint

    hf_dir = pathlib.Path(_HF.value)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"--hf: directory {hf_dir} not found")
    model_checkpoint.check_output_dir(_OUT.value, overwrite=_OVERWRITE.value)
    dtype = _param_dtype(hf_dir, _DTYPE.value)
    model, cfg = hf_import.load_model(hf_dir, dtype=dtype, param_dtype=dtype)
    with model_checkpoint.atomic_output_dir(_OUT.value, overwrite=_OVERWRITE.value) as tmp:
        model_checkpoint.write_model_dir(tmp, model_checkpoint.model_state(model), cfg)
        for file in [*(hf_dir / n for n in TOKENIZER_FILES), *hf_dir.glob("*.model")]:
            if file.is_file():
                shutil.copyfile(file, tmp / file.name)
    out = pathlib.Path(_OUT.value).absolute()
    print(f"imported {hf_dir} → {out} ({cfg.num_hidden_layers} layers + "
          f"{cfg.num_nextn_predict_layers} MTP, params {dtype})")
