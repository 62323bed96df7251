"""Shared pieces of the side-by-side benchmarks: the measured peak, timing, machine load, upstream.

* `measure_peak`: bf16 x bf16 -> f32 matmul FLOP/s as the MEDIAN of repeated measurements, with
  the spread (min, max), so MFU neither flatters (a low peak) nor jumps between runs (one lucky max).
* `alternate`: times several callables in alternation (A B A B ...) and reports the median of each,
  so a load change on the shared machine hits both sides alike; ratios come from one sitting.
* `load_upstream`: the upstream PyTorch Ling 2.0 code (`../shared/reference/ling-v2-upstream`),
  imported by path as a package (it imports its config relatively); None with the reason when
  torch/transformers or the directory are absent. Never copied into the project.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import sys
import time
import types
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

UPSTREAM_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "ling-v2-upstream"
_UPSTREAM_PACKAGE = "ling_v2_upstream"
PEAK_N = flags.DEFINE_integer("peak_n", 2048, "matmul size n (n x n x n) of the peak measurement")
PEAK_REPEATS = flags.DEFINE_integer("peak_repeats", 15, "matmul timings for the peak median")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over repeats: median and spread."""

    median: float
    low: float
    high: float
    repeats: int

    def spread(self) -> str:
        return f"{self.low * 1e3:.0f}-{self.high * 1e3:.0f} ms over {self.repeats}"


def timing(seconds: Sequence[float]) -> Timing:
    s = np.asarray(seconds, np.float64)
    return Timing(float(np.median(s)), float(s.min()), float(s.max()), len(s))


def machine_load() -> str:
    """The 1/5/15-minute load averages and the core count, to print beside every figure."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


@dataclasses.dataclass(frozen=True)
class Peak:
    """bf16 matmul FLOP/s (f32 accumulation): median of `repeats` timings and their spread."""

    median: float
    low: float
    high: float
    repeats: int

    def describe(self) -> str:
        return (f"peak {self.median / 1e9:.0f} GFLOP/s (median of {self.repeats} bf16 matmuls, "
                f"f32 accumulate; spread {self.low / 1e9:.0f}-{self.high / 1e9:.0f})")


def measure_peak(n: int | None = None, repeats: int | None = None) -> Peak:
    """Median FLOP/s of an n^3 bf16 matmul with f32 accumulation (table value off CPU); n and
    repeats default to --peak_n and --peak_repeats."""
    import jax
    import jax.numpy as jnp

    from ling_jax.train import flops

    n = PEAK_N.value if n is None else n
    repeats = PEAK_REPEATS.value if repeats is None else repeats
    table = flops.peak_flops_per_device()
    if table is not None:
        return Peak(table, table, table, 0)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.bfloat16)
    b = jax.random.normal(key_b, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        rates.append(2.0 * n**3 / (time.perf_counter() - start))
    return Peak(float(np.median(rates)), float(min(rates)), float(max(rates)), repeats)


def alternate(fns: Sequence[Callable[[], object]], repeats: int,
              cold: list[Timing] | None = None) -> list[Timing]:
    """Times each fn `repeats` times, interleaved (fn0, fn1, ..., fn0, fn1, ...); fns must block.

    Each timed call directly follows an untimed call of the same fn: memory a side has not
    touched for ~1 s may have been paged out by the kernel (this VM runs DAMON reclaim), so the
    first call after the other side runs 2-3x slower than a warm one. Those first calls are
    appended to `cold` when given, so both can be reported.
    """
    seconds: list[list[float]] = [[] for _ in fns]
    firsts: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            for record in (firsts[i], seconds[i]):
                start = time.perf_counter()
                fn()
                record.append(time.perf_counter() - start)
    if cold is not None:
        cold.extend(timing(s) for s in firsts)
    return [timing(s) for s in seconds]


def load_upstream(directory: pathlib.Path | str | None = None):
    """(upstream modeling module, None) or (None, reason): the reason says what is missing."""
    directory = pathlib.Path(directory or os.environ.get("LING_UPSTREAM_DIR", UPSTREAM_DIR))
    if not (directory / "modeling_bailing_moe_v2.py").is_file():
        return None, f"upstream not available: no modeling_bailing_moe_v2.py in {directory}"
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return None, f"upstream not available: {e} (pip install -e .[torch])"
    package = sys.modules.get(_UPSTREAM_PACKAGE)
    if package is None:
        package = types.ModuleType(_UPSTREAM_PACKAGE)
        package.__path__ = [str(directory)]
        sys.modules[_UPSTREAM_PACKAGE] = package
    return importlib.import_module(f"{_UPSTREAM_PACKAGE}.modeling_bailing_moe_v2"), None


def upstream_model(modeling, cfg, dtype: str):
    """Upstream BailingMoeV2ForCausalLM with `cfg`'s architecture (random init, eval mode, SDPA)."""
    import torch

    from ling_jax.config.hf import to_hf_config

    hf = to_hf_config(cfg, torch_dtype=dtype)
    config = modeling.BailingMoeV2Config(**hf)
    config._attn_implementation = "sdpa"  # upstream's fastest CPU attention
    torch.manual_seed(0)
    model = modeling.BailingMoeV2ForCausalLM(config).to(getattr(torch, dtype))
    return model.eval()


def ratio_line(what: str, ours: float, theirs: float | None, unit: str, goal: float) -> str:
    """'what: ours X unit, upstream Y unit, ratio R (goal G)' with higher = better figures."""
    if theirs is None:
        return f"{what}: ling-jax {ours:,.0f} {unit}; upstream not measured"
    r = ours / theirs
    verdict = "reached" if r >= goal else "NOT reached"
    return (f"{what}: ling-jax {ours:,.0f} {unit}  upstream {theirs:,.0f} {unit}  "
            f"ratio {r:.2f}x (goal >= {goal:g}x: {verdict})")


def add_upstream(enabled: bool, make, fns: list, names: list, warm_up=None) -> str | None:
    """Builds the upstream side with `make()` -> (callable or None, reason), warms it up
    (`warm_up(run)`, default one call) and appends it to the timed sides; returns why it is
    missing, or None."""
    if not enabled:
        return "upstream disabled (--upstream=false)"
    run, reason = make()
    if run is not None:
        (warm_up or (lambda f: f()))(run)
        fns.append(run)
        names.append("upstream")
    return reason
