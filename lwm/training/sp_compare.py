"""`lwm plan --compare-sp`: ring, ulysses and hybrid attention side by side for one stage.

For each scheme: the bytes a device sends per layer and per step and the collective rounds
(lwm/training/sp_cost.py's formulas), which schemes cannot run the shape and why (the formulas'
caps, then the backend's own `check`), and for those that can, the train step compiled with the
backend swapped in (lwm/training/plan.py: XLA's per-device memory and the collective bytes in the
compiled HLO). The hybrid's all-to-all group is `attention.ulysses` when the config sets it, else
`sp_cost.default_ulysses`. A stage whose mesh has `sp = 1` is compared with every device but dp and
tp moved onto `sp` (there is nothing to compare on one sequence-parallel device).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lwm.errors import ConfigError
from lwm.training.plan import StagePlan, format_bytes, override_stage, plan_stage
from lwm.training.run_spec import RunSpec
from lwm.training.sp_cost import SCHEMES, AttentionShape, SpCost, attention_shape, scheme_costs


@dataclasses.dataclass(frozen=True)
class SchemeRow:
    """One scheme: its formula costs and, where it compiled, its plan."""

    cost: SpCost
    step_bytes: int
    """`cost.train_bytes` x layers x grad_accum: what a device sends in one train step."""
    plan: StagePlan | None = None
    error: str = ""
    """Why the scheme cannot run or was not compiled (empty when it compiled)."""

    @property
    def hlo_bytes(self) -> int | None:
        """Bytes of the step's collective-permute and all-to-all ops and int32 all-gathers (the
        segment ids; the parameters' fsdp all-gathers are the same for every scheme) in the
        compiled HLO."""
        if self.plan is None or not self.plan.collectives:
            return None
        c = self.plan.collectives
        seg = c["all-gather"]["by_dtype"].get("s32", 0)
        return c["collective-permute"]["bytes"] + c["all-to-all"]["bytes"] + seg

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.cost.scheme,
            "possible": self.cost.possible and not self.error,
            "error": self.error,
            "cost_per_layer": self.cost.to_dict(),
            "bytes_per_step": self.step_bytes,
            "hlo_bytes_per_step": self.hlo_bytes,
            "plan": None if self.plan is None else self.plan.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class SpComparison:
    """Everything `lwm plan --compare-sp` reports for one stage."""

    stage: int
    seq_len: int
    batch_size: int
    grad_accum: int
    mesh: dict[str, int]
    layers: int
    model_heads: tuple[int, int, int]
    """(query heads, kv heads, head dim) of the model."""
    dtype: str
    remat: str
    shape: AttentionShape
    rows: tuple[SchemeRow, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rows"}
        d["shape"] = dataclasses.asdict(self.shape)
        d["schemes"] = [r.to_dict() for r in self.rows]
        return d


def compare_mesh(sizes: dict[str, int], devices: int) -> tuple[dict[str, int], str]:
    """The mesh to compare on: the stage's own, or with sp = 1 every device but dp x tp on sp."""
    if sizes.get("sp", 1) > 1:
        return dict(sizes), ""
    rest = sizes.get("dp", 1) * sizes.get("tp", 1)
    if rest < 1 or devices % rest or devices // rest < 2:
        raise ConfigError(
            f"--compare-sp: the mesh {sizes} has sp = 1 and no devices to move onto sp "
            f"({devices} devices); set --config.mesh.sp=N"
        )
    out = dict(sizes, fsdp=1, sp=devices // rest)
    return out, f"the config's mesh has sp = 1: compared at sp = {out['sp']} (fsdp folded into sp)"


def _with_backend(spec: RunSpec, backend: str, ulysses: int) -> RunSpec:
    att = spec.model.attention
    changes: dict[str, Any] = {"backend": backend}
    field = {f.name: f for f in dataclasses.fields(att)}.get("ulysses")
    if field is not None:  # the hybrid's group; the other backends refuse a set one
        changes["ulysses"] = ulysses if backend == "hybrid" else field.default
    model = spec.model.replace(attention=dataclasses.replace(att, **changes))
    return dataclasses.replace(spec, model=model)


def compare_sp(
    spec: RunSpec,
    index: int = 0,
    *,
    seq_len: int | None = None,
    batch_size: int | None = None,
    memory_per_device: int | None = None,
    devices: int | None = None,
    compile_steps: bool = True,
) -> SpComparison:
    """Costs of the three schemes for stage `index` (and, with `compile_steps`, each possible
    scheme's compiled train step)."""
    if devices is None:
        import jax

        devices = jax.device_count()
    if not 0 <= index < len(spec.stages):
        raise ConfigError(f"--stage {index}: the config has {len(spec.stages)} stage(s)")
    sizes, note = compare_mesh(spec.mesh_sizes[index], devices)
    # the length / batch every scheme runs (each backend's own rules are checked by its plan)
    dense = _with_backend(spec, "dense", 0)
    st, sizes = override_stage(dense, index, seq_len=seq_len, batch_size=batch_size, mesh=sizes)
    model = spec.model
    micro = st.batch_size // st.grad_accum
    shape = attention_shape(model, st.seq_len, micro, sizes, "ring")
    a2a_shape = attention_shape(model, st.seq_len, micro, sizes, "ulysses")
    ulysses = int(getattr(model.attention, "ulysses", 0) or 0)
    recompute = model.remat_policy != "none"
    rows = []
    for cost in scheme_costs(shape, ulysses, recompute=recompute, a2a_shape=a2a_shape):
        step = cost.train_bytes * model.num_layers * st.grad_accum
        row = SchemeRow(cost, step, error=cost.why)
        if cost.possible and compile_steps:
            try:
                plan = plan_stage(
                    _with_backend(spec, cost.scheme, cost.ulysses),
                    index,
                    seq_len=st.seq_len,
                    batch_size=st.batch_size,
                    memory_per_device=memory_per_device,
                    mesh=sizes,
                )
                row = dataclasses.replace(row, plan=plan)
            except ConfigError as e:  # the backend's own rules (or a backend not built)
                row = dataclasses.replace(row, error=str(e))
        rows.append(row)
    assert tuple(r.cost.scheme for r in rows) == SCHEMES
    return SpComparison(
        stage=index,
        seq_len=st.seq_len,
        batch_size=st.batch_size,
        grad_accum=st.grad_accum,
        mesh={k: int(v) for k, v in sizes.items()},
        layers=model.num_layers,
        model_heads=(model.num_heads, model.num_kv_heads, model.head_dim),
        dtype=model.dtype,
        remat=model.remat_policy,
        shape=shape,
        rows=tuple(rows),
        note=note,
    )


def _group(c: SpCost) -> str:
    return f"{c.ulysses}x{c.sp // c.ulysses}" if c.ulysses else "-"


def format_comparison(c: SpComparison) -> str:
    """The side-by-side table of one stage."""
    s, (n, k, h) = c.shape, c.model_heads
    mesh = " ".join(f"{a}={v}" for a, v in c.mesh.items())
    lines = [
        f"stage {c.stage}: sequence parallelism at seq_len {c.seq_len:,} x batch {c.batch_size} "
        f"(grad_accum {c.grad_accum}), mesh {mesh}",
        f"  model: {c.layers} layers, {n} q / {k} kv heads of {h}, {c.dtype}, remat {c.remat}; "
        f"per device: {s.batch} row(s) x {s.local_len:,} tokens, {s.heads} q / {s.kv_heads} kv "
        "heads",
    ]
    if c.note:
        lines.append(f"  note: {c.note}")
    head = (
        f"  {'scheme':<8} {'a2a x ring':>10} {'rounds f/b':>11} {'fwd/layer':>11} "
        f"{'bwd/layer':>11} {'step':>11} {'vs ring':>8} {'CPU HLO':>11} {'memory':>11} "
        f"{'temps':>11}"
    )
    lines.append(head)
    for r in c.rows:
        cost = r.cost
        if not cost.possible:
            lines.append(f"  {cost.scheme:<8} {_group(cost):>10}  impossible: {cost.why}")
            continue
        ring = c.rows[0].step_bytes
        cells = [
            f"{cost.forward_rounds}/{cost.backward_rounds}",
            format_bytes(cost.forward_bytes),
            format_bytes(cost.backward_bytes),
            format_bytes(r.step_bytes),
            f"{r.step_bytes / ring:.3f}" if ring else "-",
        ]
        if r.plan is not None:
            hlo = r.hlo_bytes
            cells += [
                "-" if hlo is None else format_bytes(hlo),
                format_bytes(r.plan.memory.total),
                format_bytes(r.plan.memory.temporaries),
            ]
        widths = (11, 11, 11, 11, 8, 11, 11, 11)
        row = " ".join(f"{x:>{w}}" for x, w in zip(cells, widths))
        line = f"  {cost.scheme:<8} {_group(cost):>10} {row}"
        if r.plan is not None and r.plan.fits is not None:
            line += "  fits" if r.plan.fits else "  DOES NOT FIT"
        if r.error:
            line += f"  not compiled: {r.error}"
        lines.append(line)
    recompute = " (x2 forward: rematerialised)" if c.rows[0].cost.recompute else ""
    lines += [
        f"  fwd/bwd/layer: bytes one device sends per layer (formulas: lwm/training/sp_cost.py); "
        f"step: fwd{recompute} + bwd, x {c.layers} layers x grad_accum; CPU HLO: the compiled "
        "step's collective-permute + all-to-all + int32 all-gather bytes (XLA:CPU sends bf16 as "
        "f32; plus the layout permutes); memory: XLA's per-device total and temporaries",
    ]
    return "\n".join(lines)
