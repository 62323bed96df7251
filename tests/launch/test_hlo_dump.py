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
