"""`ling-jax export-hf --checkpoint CKPT --out DIR`: model checkpoint → HF Ling 2.0 directory.

The directory loads offline with `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`
(the transformers code is written beside the weights). The tokenizer is --tokenizer, else the
tokenizer.json beside the checkpoint (a train run's <workdir>/final_model holds one), as
`ling-jax generate` finds it; it is exported with its special tokens and generation_config.json.
"""

from __future__ import annotations

import pathlib
import re
import sys

from absl import flags, logging

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_CHECKPOINT = DEFINE_path("checkpoint", None, "model checkpoint directory (import-hf or a "
                                  "train step's model)")
_OUT = DEFINE_path("out", None, "HF directory to create")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16",
                           "bfloat16 | float32 | fp8 (E4M3 128x128 blocks + _scale_inv)")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GiB",
                                 "shard size limit: bytes or a number with KB/MB/GB (10^3) or "
                                 "KiB/MiB/GiB (2^10)")
_TOKENIZER = DEFINE_path("tokenizer", None, "tokenizer.json or its directory (default: the one "
                         "beside --checkpoint, in it or its parent)")
_NO_TOKENIZER = flags.DEFINE_bool("no_tokenizer", False, "export the weights without a tokenizer")
_CHAT_TEMPLATE = DEFINE_path("chat_template", None, "Jinja chat template file written into "
                             "tokenizer_config.json")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a non-empty --out directory")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'5GB' → 5*10^9, '5GiB' → 5*2^30, '1000' → 1000 (the HF max_shard_size convention)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"--max_shard_size {text!r}: use bytes or a number with one of "
                         "KB, MB, GB, KiB, MiB, GiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"--max_shard_size {text!r}: must be positive")
    return size


def default_tokenizer(checkpoint: str) -> pathlib.Path | None:
    """The tokenizer.json in the checkpoint directory or its parent, if any."""
    path = pathlib.Path(checkpoint).absolute()
    for file in (path / "tokenizer.json", path.parent / "tokenizer.json"):
        if file.is_file():
            return file
    return None


def _tokenizer_and_template() -> tuple[str | pathlib.Path | None, str | None]:
    if _NO_TOKENIZER.value and (_TOKENIZER.value or _CHAT_TEMPLATE.value):
        raise ValueError("--no_tokenizer contradicts --tokenizer/--chat_template; drop one")
    template = None
    if _CHAT_TEMPLATE.value:
        file = pathlib.Path(_CHAT_TEMPLATE.value)
        if not file.is_file():
            raise FileNotFoundError(f"--chat_template: file {file} not found")
        template = file.read_text()
    if _NO_TOKENIZER.value or _TOKENIZER.value:
        return _TOKENIZER.value, template
    return default_tokenizer(_CHECKPOINT.value), template


@user_errors_exit
def main(argv) -> None:
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save/restore step at INFO
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    if not _CHECKPOINT.value or not _OUT.value:
        raise ValueError("--checkpoint CKPT and --out DIR are both required")
    max_shard_bytes = parse_size(_MAX_SHARD.value)
    from ling_jax.interop import hf_export, model_checkpoint

    if not pathlib.Path(_CHECKPOINT.value).is_dir():
        raise FileNotFoundError(f"--checkpoint: directory {_CHECKPOINT.value} not found")
    tokenizer, template = _tokenizer_and_template()
    options = dict(dtype=_DTYPE.value, max_shard_bytes=max_shard_bytes, tokenizer_dir=tokenizer,
                   chat_template=template, overwrite=_OVERWRITE.value)
    hf_export.check_export_args(_OUT.value, **options)  # before the (large) model is loaded
    model, cfg = model_checkpoint.load_model(_CHECKPOINT.value)
    out = hf_export.export_hf(model, cfg, _OUT.value, **options)
    if tokenizer is None and not _NO_TOKENIZER.value:
        print(f"ling-jax: warning: no tokenizer.json in {_CHECKPOINT.value} or its parent; the "
              "export has no tokenizer (pass --tokenizer PATH)", file=sys.stderr)
    print(f"exported {_CHECKPOINT.value} → {out} ({_DTYPE.value}"
          f"{', tokenizer ' + str(tokenizer) if tokenizer else ', no tokenizer'}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
