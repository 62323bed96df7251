"""compile_with_hlo returns the optimized module XLA dumps, the same program as_text() prints."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ling_jax.launch.hlo_dump import compile_with_hlo


def test_dumped_module_is_the_compiled_program():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    ring = [(i, (i + 1) % 8) for i in range(8)]
    fn = jax.jit(jax.shard_map(lambda a: jnp.sin(jax.lax.ppermute(a, "x", ring)), mesh=mesh,
                               in_specs=P("x"), out_specs=P("x")))
    compiled, hlo = compile_with_hlo(fn.lower(np.ones((64, 4), np.float32)))
    assert hlo is not None and hlo.lstrip().startswith("HloModule")
    ops = lambda text: sorted(re.findall(r"= \S+ (collective-permute\S*|sine)\(", text))
    assert ops(hlo) == ops(compiled.as_text()) and "sine" in ops(hlo)
    assert any(op.startswith("collective-permute") for op in ops(hlo))


def test_kept_dump_holds_the_module_and_the_buffer_assignment(tmp_path):
    fn = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
    x = np.random.default_rng(0).standard_normal((32, 32), np.float32)
    _, hlo = compile_with_hlo(fn.lower(x, x), str(tmp_path / "dump"))
    finals = sorted((tmp_path / "dump").glob("*after_optimizations.txt"),
                    key=lambda p: p.stat().st_size)
    assert finals and finals[-1].read_text() == hlo
    assert list((tmp_path / "dump").glob("*buffer-assignment.txt"))


def test_aot_refuses_a_non_empty_dump_dir_before_compiling(tmp_path):
    from tests.reliability.hostile import assert_one_line, cli

    earlier = tmp_path / "dump" / "module.txt"
    earlier.parent.mkdir()
    earlier.write_text("an earlier dump")
    result = cli("aot", "--config", "tests/launch/aot_small.py", "--dump_to", earlier.parent,
                 timeout=120)
    assert_one_line(result, "--dump_to", "not empty", "new or empty directory")
    assert earlier.read_text() == "an earlier dump" and len(list(earlier.parent.iterdir())) == 1
