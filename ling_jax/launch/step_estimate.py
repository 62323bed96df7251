"""Paper estimate of a compiled train step: collective bytes from its HLO, time and MFU bounds.

Collectives are read from the compiled (SPMD-partitioned) HLO text: every all-gather,
reduce-scatter, all-reduce, all-to-all, ragged-all-to-all and collective-permute (sync or
async `-start`), with its operand bytes and replica-group size, multiplied by how often it runs:
a while loop's body counts `known_trip_count` times (scanned layers, microbatches), nested loops
multiply; where the compiler printed no trip count (libtpu), the bound N of the loop's condition
`counter < N` is used. Bytes on the wire per device follow the ring algorithms: all-gather (n-1)·operand,
reduce-scatter and all-to-all (n-1)/n·operand, all-reduce 2(n-1)/n·operand, collective-permute
the operand. libtpu writes a reduce-scatter as a fusion whose all-reduce feeds a ROOT dynamic-slice
of 1/n of it (and runs it as a reduce-scatter): such an all-reduce counts as a reduce-scatter of its
operand. Estimated times per step, per device:
    compute    = model FLOPs / peak bf16 FLOP/s        (XLA's FLOPs count loop bodies once)
    collective = wire bytes / ICI bandwidth (bidirectional per chip / devices per chip)
    step bound = max(compute, collective) (perfect overlap); serial = their sum
    MFU bound  = compute / step bound
HBM traffic is not estimated (XLA's bytes-accessed also counts loop bodies once; reported as is).
"""

from __future__ import annotations

import collections
import dataclasses
import re

from ling_jax.launch.chips import Chip

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "ragged-all-to-all",
               "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "bf16": 2,
          "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b([a-z0-9]+)\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_TRIP = re.compile(r'known_trip_count[^0-9]*(\d+)')
_NAME = re.compile(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_S32_CONSTANT = re.compile(r"=\s*s32\[\][^=]*\bconstant\((\d+)\)")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype in _BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            total += n * _BYTES[dtype]
    return total


def _group_size(line: str, devices: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if iota:
        return int(iota.group(2))
    explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if explicit:
        return len(explicit.group(1).split(","))
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\s*[,}]", line)
    return 2 if pairs else devices


def _operand_bytes(result: str, op: str, n: int, start: bool) -> float:
    """Operand bytes from the printed result shape (operands are printed without shapes)."""
    if start and result.startswith("("):  # async start: (operand, output, ...) → the operand
        return _shape_bytes(_SHAPE.search(result).group(0))
    size = _shape_bytes(result)
    if op == "all-gather":
        return size / max(n, 1)
    if op == "reduce-scatter":
        return size * n
    return size


def _wire_factor(op: str, n: int) -> float:
    if n <= 1:
        return 0.0
    return {"all-gather": n - 1, "reduce-scatter": (n - 1) / n, "all-to-all": (n - 1) / n,
            "ragged-all-to-all": (n - 1) / n, "all-reduce": 2 * (n - 1) / n,
            "collective-permute": 1.0}[op]


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = ("ENTRY:" if line.startswith("ENTRY") else "") + head.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


def _condition_bound(lines: list[str]) -> int | None:
    """N of a loop condition `counter < N` (a compare LT against one s32 constant): the trip count
    of a loop counting from 0. libtpu's optimized HLO carries no known_trip_count annotation."""
    if not any("direction=LT" in line for line in lines):
        return None
    bounds = [int(m) for line in lines for m in _S32_CONSTANT.findall(line)]
    return bounds[0] if len(bounds) == 1 else None


def _trip_count(line: str, comps: dict[str, list[str]], names: dict[str, str]) -> int | None:
    """A while op's trip count: its known_trip_count, else its condition's bound (None: unknown)."""
    trip = _TRIP.search(line)
    if trip:
        return int(trip.group(1))
    cond = re.search(r"\bcondition=%?([\w.\-]+)", line)
    if cond and cond.group(1) in names:
        return _condition_bound(comps[names[cond.group(1)]])
    return None


def _multipliers(comps: dict[str, list[str]]) -> dict[str, float]:
    """How often each computation runs per step (while bodies × trip count, nested)."""
    names = {n.removeprefix("ENTRY:"): n for n in comps}
    calls: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for name, lines in comps.items():
        for line in lines:
            trip = _trip_count(line, comps, names)
            for attr, callee in re.findall(
                    r"\b(body|condition|to_apply|calls|branch_computations|called_computations)"
                    r"=\{?%?([\w.\-]+)", line):  # tpu7x wraps collectives in custom-calls
                if callee in names:
                    weight = float(trip) if (trip is not None and attr == "body") else 1.0
                    calls[name].append((names[callee], weight))
    mult: dict[str, float] = collections.defaultdict(float)
    entry = [n for n in comps if n.startswith("ENTRY:")]

    def visit(name: str, m: float, depth: int = 0) -> None:
        if depth > 64:
            return
        mult[name] += m
        for callee, w in calls.get(name, []):
            visit(callee, m * w, depth + 1)

    for e in entry:
        visit(e, 1.0)
    return mult


def _value_name(line: str) -> str | None:
    """The name an HLO instruction line defines (`%x = ...` / `ROOT %x = ...`)."""
    name = _NAME.match(line)
    return name.group(1) if name else None


def _scattered_all_reduce(lines: list[str], devices: int) -> str | None:
    """The all-reduce's name when `lines` are a reduce-scatter written as all-reduce + ROOT
    dynamic-slice of 1/n of its result (libtpu's all-reduce-scatter fusions), else None."""
    root = next((line for line in lines if line.lstrip().startswith("ROOT ")), "")
    sliced = re.search(r"=\s*(\S+)\s+dynamic-slice\(%?([\w.\-]+)", root)
    if not sliced:
        return None
    for line in lines:
        hit = _OP.search(line)
        if hit and hit.group(2) == "all-reduce" and _value_name(line) == sliced.group(2):
            n = _group_size(line, devices)
            if _shape_bytes(sliced.group(1)) * n == _shape_bytes(hit.group(1)):
                return sliced.group(2)
    return None


def collective_bytes(hlo: str, devices: int) -> dict[str, dict[str, float]]:
    """{op: {"count", "operand_bytes", "wire_bytes"}} per step per device from compiled HLO."""
    comps = _computations(hlo)
    mult = _multipliers(comps)
    out = {op: {"count": 0.0, "operand_bytes": 0.0, "wire_bytes": 0.0} for op in COLLECTIVES}
    for name, lines in comps.items():
        m = mult.get(name, 0.0)
        scattered = _scattered_all_reduce(lines, devices) if m else None
        for line in lines:
            hit = _OP.search(line)
            if not hit or not m:
                continue
            result, op, start = hit.groups()
            n = _group_size(line, devices)
            size = _operand_bytes(result, op, n, bool(start))
            if scattered and _value_name(line) == scattered:
                op = "reduce-scatter"  # the all-reduce's operand is the reduce-scatter's
            out[op]["count"] += m
            out[op]["operand_bytes"] += m * size
            out[op]["wire_bytes"] += m * size * _wire_factor(op, n)
    return out


@dataclasses.dataclass
class StepEstimate:
    chip: str
    compute_seconds: float
    collective_seconds: float
    step_seconds_bound: float  # max(compute, collective): perfect overlap
    step_seconds_serial: float  # compute + collective: no overlap
    mfu_bound: float


def estimate(chip: Chip, model_flops_per_device: float, wire_bytes_per_device: float
             ) -> StepEstimate:
    compute = model_flops_per_device / chip.per_device(chip.peak_bf16)
    collective = wire_bytes_per_device / chip.per_device(chip.ici_bw)
    bound = max(compute, collective)
    return StepEstimate(chip.name, compute, collective, bound, compute + collective,
                        compute / bound if bound else 0.0)
