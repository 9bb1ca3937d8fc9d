"""The collectives of a compiled XLA program and the bytes each device sends through them.

`collective_stats(compiled.as_text())` walks the HLO module's call graph from the entry
computation, multiplies every computation by how often it runs (a `while` body by the loop's
`known_trip_count`, which XLA records for scans), and sums per collective kind the bytes one
device sends:

  - `collective-permute`: the whole operand, once per execution (devices that are a source);
  - `all-to-all`: (G - 1) / G of the operand, G the replica group size (the slice it keeps for
    itself never leaves it);
  - `all-gather`: its operand (the result / G) to each of the G - 1 others;
  - `all-reduce`, `reduce-scatter`: 2 (G - 1) / G of the operand (a ring all-reduce), reported
    apart since the schemes compared by `lwm plan --compare-sp` do not differ in them.

Shapes are read from the instruction's result type (per device after SPMD partitioning). It is
what lwm/training/sp_cost.py's formulas are checked against (tests/test_sp_cost.py). On CPU, XLA
converts bf16 collectives to f32 before sending (a CPU-only pass), so a bf16 program's CPU HLO shows
twice the bytes an accelerator sends: compare with the f32 formula there.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Any

from lwm.errors import LwmError

KINDS = ("collective-permute", "all-to-all", "all-gather", "all-reduce", "reduce-scatter")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_CALLS = re.compile(
    r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([\d,]+)\]<=")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective instruction of the program."""

    kind: str
    name: str
    computation: str
    executions: int
    """How often it runs per program execution (loop trip counts multiplied)."""
    operand_bytes: int
    """Per device, one execution."""
    group_size: int
    sent_bytes: int
    """Bytes one device sends in one execution (see the module docstring)."""
    dtype: str = ""
    """Element type of the (first) array moved, e.g. `f32`, `s32`."""


@dataclasses.dataclass(frozen=True)
class CollectiveStats:
    """Per-device totals over one execution of a compiled program."""

    ops: tuple[CollectiveOp, ...]

    def _of(self, kind: str, dtype: str | None):
        return [op for op in self.ops if op.kind == kind and dtype in (None, op.dtype)]

    def bytes(self, kind: str, dtype: str | None = None) -> int:
        """Bytes a device sends through `kind` ops (of element type `dtype`, e.g. "s32")."""
        return sum(op.sent_bytes * op.executions for op in self._of(kind, dtype))

    def count(self, kind: str, dtype: str | None = None) -> int:
        return sum(op.executions for op in self._of(kind, dtype))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Per kind: bytes, count, and bytes by element type."""
        out = {}
        for k in KINDS:
            types = sorted({op.dtype for op in self._of(k, None)})
            by_dtype = {t: self.bytes(k, t) for t in types}
            out[k] = {"bytes": self.bytes(k), "count": self.count(k), "by_dtype": by_dtype}
        return out


def _array_bytes(type_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            raise LwmError(f"HLO: unknown element type {dtype!r} in {type_text!r}")
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dtype]
    return total


def _group_size(attrs: str) -> int:
    m = _GROUPS_IOTA.search(attrs)
    if m:
        return int(m.group(1).split(",")[-1])
    m = _GROUPS_LIST.search(attrs)
    if m:
        return max(len(g.split(",")) for g in re.findall(r"\{([\d,]*)\}", m.group(1)))
    return 1


def _parse(text: str):
    """{computation: [(kind, name, result_type, attrs)]}, call edges, the entry's name."""
    comps: dict[str, list] = {}
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = m.group(2)
                comps[current] = []
                entry = current if m.group(1) else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.group(2), m.group(3), m.group(4), m.group(5)
        trip = 1
        if opcode == "while":
            t = _TRIP.search(rest)
            trip = int(t.group(1)) if t else -1  # unknown: refused if it holds collectives
        for what, callee in _CALLS.findall(rest):
            edges[current].append((callee, trip if what in ("body", "condition") else 1))
        for group in _BRANCHES.findall(rest):
            for callee in re.findall(r"%([\w.\-]+)", group):
                edges[current].append((callee, 1))
        base = opcode.removesuffix("-start")
        if base in KINDS and not opcode.endswith("-done"):
            comps[current].append((base, name, type_text, rest))
    if entry is None:
        raise LwmError("HLO text has no ENTRY computation")
    return comps, edges, entry


def _executions(comps, edges, entry) -> dict[str, int]:
    """How often each computation runs; -1 where a loop's trip count is unknown."""
    runs: dict[str, int] = defaultdict(int)

    def visit(comp: str, times: int) -> None:
        runs[comp] = -1 if times < 0 or runs[comp] < 0 else runs[comp] + times
        for callee, trip in edges.get(comp, ()):
            visit(callee, -1 if times < 0 or trip < 0 else times * trip)

    visit(entry, 1)
    return runs


def collective_stats(hlo_text: str) -> CollectiveStats:
    """The collectives of a compiled program's HLO text (`compiled.as_text()`), per device."""
    comps, edges, entry = _parse(hlo_text)
    runs = _executions(comps, edges, entry)
    ops = []
    for comp, instrs in comps.items():
        for kind, name, type_text, attrs in instrs:
            times = runs.get(comp, 0)
            if times < 0:
                raise LwmError(f"HLO: {kind} {name} runs in a loop of unknown trip count")
            size = _array_bytes(type_text)
            if kind == "collective-permute":
                pairs = _PAIRS.search(attrs)
                moved = pairs and any(a != b for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs[1]))
                group, sent = 2, size if moved else 0
            else:
                group = _group_size(attrs)
                if kind == "all-to-all":
                    sent = size * (group - 1) // group
                elif kind == "all-gather":
                    sent = size // group * (group - 1)  # result is G operands
                else:
                    operand = size * group if kind == "reduce-scatter" else size
                    sent = 2 * operand * (group - 1) // group
            first = _ARRAY.search(type_text)
            dtype = first.group(1) if first else ""
            ops.append(CollectiveOp(kind, name, comp, times, size, group, sent, dtype))
    return CollectiveStats(tuple(ops))
