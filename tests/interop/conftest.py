"""Shared, session-scoped interop fixtures: the imported bailing-tiny model and its fp32 export."""

import pytest

from ling_jax.interop import hf_export, hf_import


@pytest.fixture(scope="session")
def imported(bailing_tiny_dir):
    """(model, cfg) of the fixture, imported in float32."""
    return hf_import.load_model(bailing_tiny_dir)


@pytest.fixture(scope="session")
def fp32_export(imported, tmp_path_factory):
    """The imported fixture exported back as a float32 HF directory."""
    model, cfg = imported
    out = tmp_path_factory.mktemp("hf_export") / "fp32"
    hf_export.export_hf(model, cfg, out, dtype="float32")
    return out
