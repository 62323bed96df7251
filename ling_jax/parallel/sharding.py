"""Shardings of the train state and batch from logical axes + rules, and the sharded train step.

    plan = plan_for_experiment(cfg, abstract_state)       # validates, builds mesh + shardings
    state = plan.init(lambda: init_state(cfg, opt))        # created sharded (nothing on one host)
    state = plan.place(state)                              # or: put an existing state on the mesh
    run_experiment(cfg, workdir, shard_fn=plan.shard_fn)   # phases jit with these shardings
Parameters and expert biases follow their `logical_axes` metadata (stacked layers get a leading
`layers` axis); optimizer-state leaves that mirror a parameter (same trailing key path and shape:
Adam's mu and nu) take that parameter's sharding; scalars and the rest are replicated. The batch
is sharded on its first dimension over the rule set's `batch` axes and, with a context axis, on
its sequence dimension over `context` (context parallelism; attention then gathers K/V, see
ops/attention_context.py, and activations are pinned to batch × sequence sharding).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ling_jax.model.logical import activation_sharding
from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.ops.attention_context import ContextSettings, context_settings
from ling_jax.ops.ep_transport import EPSettings, ep_settings
from ling_jax.parallel.mesh import MeshSpec, experiment_phases, make_mesh, mesh_spec, validate_mesh
from ling_jax.parallel.rules import Rules, axes_of, get_rules, logical_to_spec

KeyPath = tuple[Any, ...]


def _key(entry: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def logical_axes_of(model_cfg) -> dict[str, dict[KeyPath, tuple[str | None, ...]]]:
    """{"params"|"biases": {key path: logical axes}}; stacked layers get a leading 'layers'."""
    model = nnx.eval_shape(lambda: LingForCausalLM(model_cfg, rngs=nnx.Rngs(0)))
    _, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    out = {}
    for name, state in (("params", params), ("biases", biases)):
        flat = jax.tree_util.tree_flatten_with_path(
            state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
        table = {}
        for path, var in flat:
            axes = tuple(var.get_metadata().get("logical_axes") or (None,) * var.ndim)
            if var.ndim == len(axes) + 1:  # nnx.vmap-stacked layers
                axes = ("layers", *axes)
            if len(axes) != var.ndim:
                raise ValueError(f"{jax.tree_util.keystr(path)}: logical axes {axes} do not match "
                                 f"shape {var.shape}")
            table[tuple(_key(k) for k in path)] = axes
        out[name] = table
    return out


def _trailing_dict_keys(path: KeyPath) -> KeyPath:
    keys: list[Any] = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


def state_shardings(mesh: Mesh, rules: Rules, abstract_state: dict, model_cfg) -> dict:
    """NamedSharding tree matching `abstract_state` ({params, biases, opt_state, step})."""
    axes = logical_axes_of(model_cfg)
    shape = dict(mesh.shape)
    replicated = NamedSharding(mesh, P())

    def by_axes(table, name):
        def one(path, leaf):
            key = tuple(_key(k) for k in path)
            if key not in table:
                raise ValueError(f"state[{name!r}]{jax.tree_util.keystr(path)} is not a model "
                                 "variable; build the state from the same model config")
            return NamedSharding(mesh, logical_to_spec(table[key], rules, leaf.shape, shape))
        return one

    params = jax.tree_util.tree_map_with_path(by_axes(axes["params"], "params"),
                                              abstract_state["params"])
    flat_params = {tuple(_key(k) for k in p): (leaf.shape, s) for (p, leaf), s in zip(
        jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0],
        jax.tree.leaves(params), strict=True)}

    def opt_leaf(path, leaf):
        hit = flat_params.get(_trailing_dict_keys(path))
        if hit is not None and tuple(hit[0]) == tuple(np.shape(leaf)):
            return hit[1]
        return replicated

    out = dict(abstract_state)
    out["params"] = params
    out["biases"] = jax.tree_util.tree_map_with_path(by_axes(axes["biases"], "biases"),
                                                     abstract_state["biases"])
    out["opt_state"] = jax.tree_util.tree_map_with_path(opt_leaf, abstract_state["opt_state"])
    out["step"] = replicated
    return out


def with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying shardings (for restore and ahead-of-time compilation)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


@dataclasses.dataclass
class ShardingPlan:
    """A mesh, its rules and the shardings of one model's train state and batches."""

    mesh: Mesh
    rules: dict[str, tuple[str, ...]]
    state: Any  # NamedSharding tree of the train state
    spec: MeshSpec | None = None
    model_cfg: Any = None
    abstract_state: Any = None  # ShapeDtypeStructs of the train state (pipeline graph, AOT)

    @property
    def batch(self) -> NamedSharding:
        """Sharding of every [B, T] batch array (a prefix for the batch dict)."""
        return NamedSharding(self.mesh, logical_to_spec(("batch", "seq"), self.rules, None,
                                                        dict(self.mesh.shape)))

    def batch_of_rank(self, ndim: int) -> NamedSharding:
        """`batch` for an array of `ndim` dimensions (e.g. [B] per-row values: rows only)."""
        spec = tuple(self.batch.spec)[:ndim]
        return NamedSharding(self.mesh, P(*spec))

    @property
    def context_shards(self) -> int:
        """Ways the sequence is split (context parallelism; 1: off)."""
        shape = dict(self.mesh.shape)
        return int(np.prod([shape[a] for a in axes_of("seq", self.rules, shape)]))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def ep_settings(self) -> EPSettings:
        shape = dict(self.mesh.shape)
        spec = self.spec
        tokens = axes_of("batch", self.rules, shape) + axes_of("seq", self.rules, shape)
        return EPSettings(token_axes=tokens, expert_axis="expert",
                          mlp_axes=axes_of("mlp", self.rules, shape),
                          capacity_factor=spec.capacity_factor if spec else 0.0,
                          local_backend=spec.ep_local_backend if spec else "blocked")

    def context_settings(self) -> ContextSettings | None:
        """Context-parallel attention's axes, or None without a context axis."""
        shape = dict(self.mesh.shape)
        seq = axes_of("seq", self.rules, shape)
        if not seq:
            return None
        if len(seq) > 1:
            raise ValueError(f"mesh.rules: the sequence may be sharded over one axis, got {seq}")
        return ContextSettings(axis=seq[0], batch_axes=axes_of("batch", self.rules, shape),
                               head_axes=axes_of("heads", self.rules, shape),
                               exchange=spec.context_exchange if (spec := self.spec) else "all_gather")

    def _activation_spec(self, axes: tuple[str | None, ...]) -> P:
        """Activations follow the batch and sequence rules only (weights' rules do not apply)."""
        keep = tuple(a if a in ("batch", "seq") else None for a in axes)
        return logical_to_spec(keep, self.rules, None, dict(self.mesh.shape))

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Mesh + EP and context-parallel settings for tracing (the backends read them); with a
        context axis, activation constraints keep tokens sharded over batch × sequence."""
        cp = self.context_settings()
        with contextlib.ExitStack() as stack:
            stack.enter_context(jax.set_mesh(self.mesh))
            stack.enter_context(ep_settings(self.ep_settings()))
            stack.enter_context(context_settings(cp))
            if cp is not None:
                stack.enter_context(activation_sharding(self.mesh, self._activation_spec))
            yield

    def place(self, state):
        """Put an existing (host or single-device) state on the mesh."""
        return jax.device_put(state, self.state)

    def init(self, init_fn: Callable[[], Any]):
        """Run `init_fn` under jit with the state shardings: each device builds its shards only."""
        with self.context():
            return jax.jit(init_fn, out_shardings=self.state)()

    def abstract(self, abstract_state):
        return with_shardings(abstract_state, self.state)

    def _batch_shards(self) -> tuple[int, int]:
        """(shards of the batch dimension over the mesh, distinct ones on this process)."""
        total = int(np.prod([self.mesh.shape[a] for a in axes_of("batch", self.rules,
                                                                  dict(self.mesh.shape))]))
        local = {idx[0].indices(total) for idx in
                 self.batch_of_rank(1).addressable_devices_indices_map((total,)).values()}
        return total, len(local)

    def local_rows(self, batch_size: int) -> list[int]:
        """Rows of a global batch of `batch_size` that this process's devices hold (ascending):
        the rows its data pipeline reads."""
        rows: set[int] = set()
        for index in self.batch_of_rank(1).addressable_devices_indices_map((batch_size,)).values():
            rows.update(range(*index[0].indices(batch_size)))
        return sorted(rows)

    def global_batch(self, batch: dict):
        """Host batch → global arrays (multi-host: each process passes its own rows, those of
        `local_rows`, in ascending order)."""
        if jax.process_count() == 1:
            return jax.tree.map(lambda x: jax.device_put(x, self.batch_of_rank(x.ndim)), batch)
        total, local = self._batch_shards()

        def one(x):
            size = x.shape[0] * total // local
            where = {r: i for i, r in enumerate(self.local_rows(size))}
            return jax.make_array_from_callback(
                (size, *x.shape[1:]), self.batch_of_rank(x.ndim),
                lambda index: x[[where[r] for r in range(*index[0].indices(size))]][
                    (slice(None), *index[1:])])

        return jax.tree.map(one, batch)

    def jit_step(self, fn: Callable) -> Callable:
        """jit of fn(state, batch) -> (state, metrics) with this plan's shardings (donates state)."""
        fn = self.prepare(fn)
        return jax.jit(fn, in_shardings=(self.state, self.batch),
                       out_shardings=(self.state, self.replicated), donate_argnums=(0,))

    def shard_fn(self, fn: Callable) -> Callable:
        """The loop's hook: a step callable (state, host batch) -> (state, metrics)."""
        jitted = self.jit_step(fn)

        def step(state, batch):
            with self.context():
                return jitted(state, self.global_batch(batch))

        step.jitted = jitted  # type: ignore[attr-defined]
        return step

    def prepare(self, fn: Callable) -> Callable:
        """fn with its model graph swapped for the pipelined one when the mesh has stages."""
        if self.mesh.shape.get("pipeline", 1) == 1:
            return fn
        from ling_jax.parallel.pipeline import pipelined_step_fn

        return pipelined_step_fn(fn, self)


def make_plan(mesh: Mesh, rules: str | Rules, abstract_state: dict, model_cfg,
              spec: MeshSpec | None = None) -> ShardingPlan:
    rules = get_rules(rules)
    return ShardingPlan(mesh, rules, state_shardings(mesh, rules, abstract_state, model_cfg), spec,
                        model_cfg, abstract_state)


def make_shard_fn(mesh: Mesh, rules: str | Rules, abstract_state: dict, model_cfg) -> Callable:
    """`shard_fn` for run_experiment: wraps a step fn into a jitted, sharded step."""
    return make_plan(mesh, rules, abstract_state, model_cfg).shard_fn


def plan_for_experiment(cfg, abstract_state: dict, devices=None,
                        phases: list[str] | None = None) -> ShardingPlan:
    """Validate cfg.mesh against the model, devices and the batches of `phases` (default: every
    phase); build the mesh and the shardings."""
    devices = list(jax.devices() if devices is None else devices)
    spec = mesh_spec(cfg.get("mesh", None), len(devices))
    checked = [p for p in experiment_phases(cfg) if phases is None or p[0] in phases]
    validate_mesh(spec, cfg.model, device_count=len(devices), phases=checked)
    mesh = make_mesh(spec, devices)
    return make_plan(mesh, spec.rules, abstract_state, cfg.model, spec)


__all__ = ["ShardingPlan", "logical_axes_of", "make_plan", "make_shard_fn", "plan_for_experiment",
           "state_shardings", "with_shardings"]
