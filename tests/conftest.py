"""Test set-up: 8 fake CPU devices, CPU platform, and the shared reference fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "bailing-tiny"


@pytest.fixture(scope="session")
def bailing_tiny_dir() -> pathlib.Path:
    """The upstream reference fixture; fails under CI when missing, skips elsewhere."""
    if not (FIXTURE / "reference.npz").exists():
        msg = f"reference fixture not found at {FIXTURE} (expected ../shared beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return FIXTURE
