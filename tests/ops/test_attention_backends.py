"""The attention registry and its table: names agree with config validation, errors are one line,
and the registry module imports none of its members (the table does)."""

import ast
import pathlib

import pytest

import ling_jax.ops.attention_backends  # noqa: F401  (registers the backends)
from ling_jax.config import ConfigError, get_preset, validate_model_config
from ling_jax.config.validation import ATTENTION_BACKENDS
from ling_jax.ops import attention_registry


def test_registered_names_match_validation():
    assert attention_registry.names() == sorted(ATTENTION_BACKENDS)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; choose one of"):
        attention_registry.get("flash")


def test_registry_imports_no_backend():
    source = pathlib.Path(attention_registry.__file__).read_text()
    modules = [n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import)
                for a in n.names]
    # Only the generic name table (ops/registry.py), no backend module.
    assert not [m for m in modules if m.startswith("ling_jax") and m != "ling_jax.ops.registry"], \
        modules


@pytest.mark.parametrize("field,value,message", [
    ("attention_backend", "flash", "model.attention_backend: 'flash' is not one of"),
    ("attention_block_q", 0, "model.attention_block_q: must be a positive int"),
])
def test_bad_attention_fields_are_rejected(field, value, message):
    cfg = get_preset("tiny")
    cfg[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_model_config(cfg)


def test_splash_tiles_must_be_multiples_of_128():
    cfg = get_preset("tiny")
    cfg.update(dict(attention_backend="splash", attention_block_kv=200))
    with pytest.raises(ConfigError, match="attention_block_kv: splash attention tiles must be"):
        validate_model_config(cfg)
    cfg.attention_block_kv = 256
    validate_model_config(cfg)
