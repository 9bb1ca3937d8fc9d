"""Ahead-of-time plan of a training stage: compile the real train step on abstract inputs.

`plan_stage` builds the stage's mesh, model definition, optimizer and step with the trainer's
`build_stage`, lowers the jitted step on `jax.ShapeDtypeStruct`s that carry the shardings
(nothing is allocated), compiles it, and reads XLA's per-device memory analysis and cost
analysis. It works on simulated CPU devices, so a 1M-token stage of a 7B model on a 256-device
mesh can be checked from a laptop (`lwm plan --devices 256`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax

from lwm.errors import ConfigError, LwmError
from lwm.training import flops as flops_lib
from lwm.training.config import ResolvedStage
from lwm.training.hlo_collectives import collective_stats
from lwm.training.run_spec import RunSpec, check_stage_shapes
from lwm.training.stages import build_stage, stage_step_fn
from lwm.training.synthetic_data import synthetic_batch
from lwm.training.train_state import count_params
from lwm.training.train_step import abstract_state, batch_shardings, jit_train_step

_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_IUNITS = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """`"16GiB"`, `"16G"`, `"80gb"`, `"1.5TiB"`, `"123456"` -> bytes (G = 1e9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"memory size {text!r}: expected a number with a unit, e.g. 16GiB")
    unit = m.group(2) or ""
    scale = _IUNITS.get(unit) or _UNITS[unit]
    return int(float(m.group(1)) * scale)


def format_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes from XLA's buffer assignment of the compiled step."""

    arguments: int
    """Inputs: the (donated) train state shard and the batch shard."""
    outputs: int
    """Outputs: the new state shard and the metrics."""
    aliased: int
    """Output bytes that reuse donated argument buffers (counted once in `total`)."""
    temporaries: int
    """Activations, gradients and scratch live during the step."""
    generated_code: int
    """Compiled program size."""

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Everything `lwm plan` reports for one stage."""

    stage: int
    seq_len: int
    batch_size: int
    grad_accum: int
    mesh: dict[str, int]
    devices: int
    attention: str
    param_dtype: str
    """Storage dtype of the parameters (the optimizer state follows it)."""
    compute_dtype: str
    """Activation / matmul dtype the memory was planned with (bfloat16: bf16 training memory)."""
    params: int
    memory: MemoryPlan
    xla_flops_per_device: float
    """XLA's cost analysis of the per-device program (loops counted once: scanned layers and
    ring steps are undercounted)."""
    model_flops_per_step: float
    """Useful model FLOPs of the whole step (6 x matmul params x tokens + causal attention)."""
    lower_seconds: float
    compile_seconds: float
    memory_per_device: int | None
    """The budget to check against (bytes), if given."""
    collectives: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per collective kind, the bytes one device sends per step, how many ops run and the bytes
    by element type, read from the compiled HLO (lwm/training/hlo_collectives.py; XLA:CPU sends
    bf16 as f32)."""

    @property
    def fits(self) -> bool | None:
        if self.memory_per_device is None:
            return None
        return self.memory.total <= self.memory_per_device

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"]["total"] = self.memory.total
        d["fits"] = self.fits
        d["tokens_per_step"] = self.seq_len * self.batch_size
        return d


def override_stage(
    spec: RunSpec,
    index: int,
    *,
    seq_len: int | None = None,
    batch_size: int | None = None,
    mesh: dict[str, int] | None = None,
) -> tuple[ResolvedStage, dict[str, int]]:
    """Stage `index` of `spec` (and its mesh sizes) with a different length / batch / mesh.

    Without `batch_size`, a new `seq_len` keeps the stage's tokens per step where it can: the
    batch is `batch_tokens // seq_len`, raised to the smallest multiple of dp*fsdp*grad_accum.
    """
    if not 0 <= index < len(spec.stages):
        raise ConfigError(f"--stage {index}: the config has {len(spec.stages)} stage(s)")
    st, sizes = spec.stages[index], dict(mesh or spec.mesh_sizes[index])
    if seq_len is not None or batch_size is not None:
        t = seq_len or st.seq_len
        if t < 1:
            raise ConfigError(f"seq_len must be >= 1, got {t}")
        if batch_size is None:
            unit = sizes["dp"] * sizes["fsdp"] * st.grad_accum
            batch_size = max(unit, math.ceil(max(1, st.batch_tokens // t) / unit) * unit)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        st = dataclasses.replace(
            st,
            seq_len=t,
            batch_size=batch_size,
            max_sequence_length=max(st.max_sequence_length, t),
        )
    check_stage_shapes(spec.model, st, sizes)
    return st, sizes


def abstract_batch(batch_size: int, seq_len: int, shardings: dict) -> dict:
    """ShapeDtypeStructs of a train batch, dtypes as the data sources produce them."""
    sample = synthetic_batch(0, seed=0, batch_size=1, seq_len=8, vocab_size=8)
    return {
        k: jax.ShapeDtypeStruct((batch_size, seq_len), v.dtype, sharding=shardings[k])
        for k, v in sample.items()
    }


def _xla_flops(compiled) -> float:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return math.nan
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", math.nan))


def _collectives(compiled) -> dict[str, dict[str, Any]]:
    try:
        return collective_stats(compiled.as_text()).to_dict()
    except LwmError:  # an HLO construct the reader does not know: report no figures
        return {}


def plan_stage(
    spec: RunSpec,
    index: int = 0,
    *,
    seq_len: int | None = None,
    batch_size: int | None = None,
    memory_per_device: int | None = None,
    mesh: dict[str, int] | None = None,
) -> StagePlan:
    """Compiles stage `index`'s train step on abstract inputs and reads its memory and cost;
    `mesh` replaces the stage's mesh sizes."""
    st, sizes = override_stage(spec, index, seq_len=seq_len, batch_size=batch_size, mesh=mesh)
    ctx = build_stage(spec, index, 0, stage=st, mesh_sizes=sizes)  # as the trainer builds it
    mesh, mdef = ctx.mesh, ctx.mdef
    state = abstract_state(mdef, ctx.optimizer, mesh, ctx.shardings)
    b_sh = batch_shardings(mesh, st.batch_size, st.seq_len)
    batch = abstract_batch(st.batch_size, st.seq_len, b_sh)
    step_fn = stage_step_fn(spec.train, st, mdef, ctx.optimizer, 0)
    jitted = jit_train_step(step_fn, ctx.shardings, b_sh, mesh)
    t0 = time.perf_counter()
    lowered = jitted.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    memory = MemoryPlan(
        arguments=int(mem.argument_size_in_bytes),
        outputs=int(mem.output_size_in_bytes),
        aliased=int(mem.alias_size_in_bytes),
        temporaries=int(mem.temp_size_in_bytes),
        generated_code=int(mem.generated_code_size_in_bytes),
    )
    tokens = st.seq_len * st.batch_size
    return StagePlan(
        stage=index,
        seq_len=st.seq_len,
        batch_size=st.batch_size,
        grad_accum=st.grad_accum,
        mesh={k: int(v) for k, v in mesh.shape.items()},
        devices=int(mesh.size),
        attention=spec.model.attention.backend,
        param_dtype=mdef.config.param_dtype,
        compute_dtype=mdef.config.dtype,
        params=count_params(mdef.abstract_pure_params()),
        memory=memory,
        xla_flops_per_device=_xla_flops(compiled),
        model_flops_per_step=flops_lib.train_flops_per_token(mdef.config, st.seq_len) * tokens,
        lower_seconds=t1 - t0,
        compile_seconds=t2 - t1,
        memory_per_device=memory_per_device,
        collectives=_collectives(compiled),
    )


def format_plan(p: StagePlan) -> str:
    """The human-readable report of one stage."""
    m = p.memory
    mesh = " ".join(f"{k}={v}" for k, v in p.mesh.items())
    lines = [
        f"stage {p.stage}: seq_len {p.seq_len:,} x batch {p.batch_size} "
        f"({p.seq_len * p.batch_size:,} tokens/step, grad_accum {p.grad_accum}), "
        f"attention {p.attention}",
        f"  precision     params {p.param_dtype}, compute {p.compute_dtype}",
        f"  mesh          {mesh} ({p.devices} devices)",
        f"  parameters    {p.params:,} ({p.params / 1e9:.3f} B)",
        "  memory/device (XLA buffer assignment)",
        f"    arguments   {format_bytes(m.arguments)}",
        f"    outputs     {format_bytes(m.outputs)} ({format_bytes(m.aliased)} aliased to "
        "donated arguments)",
        f"    temporaries {format_bytes(m.temporaries)}",
        f"    code        {format_bytes(m.generated_code)}",
        f"    total       {format_bytes(m.total)}",
        f"  FLOPs/step    model {p.model_flops_per_step:.3e} (useful, whole mesh); "
        f"XLA {p.xla_flops_per_device:.3e} per device (loops counted once)",
        f"  compile       lower {p.lower_seconds:.1f} s, compile {p.compile_seconds:.1f} s",
    ]
    if p.memory_per_device is not None:
        verdict = "fits" if p.fits else "DOES NOT FIT"
        lines.append(
            f"  budget        {format_bytes(p.memory_per_device)} per device: {verdict} "
            f"({100 * m.total / p.memory_per_device:.0f}% used)"
        )
    return "\n".join(lines)
