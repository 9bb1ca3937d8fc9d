"""The trainer: walks the configured stages, checkpointing and resuming exactly.

Workdir layout: `config.json` (the run's config at first start), `checkpoints/<step>/` (orbax),
`metrics.jsonl`, `loss_curve.png`. A restart finds the latest checkpoint and continues inside the
stage it names (a finished stage moves on to the next one); a workdir that holds a different model
or foreign files is refused before any compute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lwm.checkpoint import Checkpointer, UnreadableStepError
from lwm.errors import ConfigError, LwmError
from lwm.models.config import ModelConfig
from lwm.sharding import make_mesh
from lwm.sharding.mesh import MESH_AXES, resolve_mesh_shape
from lwm.training import flops as flops_lib
from lwm.training.config import ResolvedStage, TrainConfig, resolve_stages
from lwm.training.metrics import MetricsWriter, plot_loss_curve, read_metrics
from lwm.training.optimizer import make_optimizer, weight_decay_mask
from lwm.training.schedule import make_schedule
from lwm.training.signals import StopRequest
from lwm.training.train_state import ModelDef, count_params, init_params, model_def, rng_data
from lwm.training.train_step import (
    abstract_state,
    batch_shardings,
    jit_train_step,
    make_train_step,
    state_shardings,
)
from lwm.training.workdir_tokenizer import copy_tokenizer_to_workdir

OWN_FILES = {
    "config.json",
    "metrics.jsonl",
    "metrics.jsonl.tmp",
    "loss_curve.png",
    "checkpoints",
    "tokenizer.model",
}


@dataclasses.dataclass
class RunSpec:
    """Everything parsed and validated from a config, before any device work."""

    config: ml_collections.ConfigDict
    model: ModelConfig
    train: TrainConfig
    stages: list[ResolvedStage]
    mesh_sizes: list[dict[str, int]]  # per stage
    data: Mapping[str, Any]


@dataclasses.dataclass
class TrainResult:
    step: int
    stage: int
    preempted: bool
    last_metrics: dict[str, float]


def _mesh_dict(config: ml_collections.ConfigDict) -> dict[str, int]:
    mesh = config.get("mesh") or {}
    mesh = mesh.to_dict() if hasattr(mesh, "to_dict") else dict(mesh)
    return {a: int(mesh.get(a, 1)) for a in MESH_AXES} | {
        k: int(v) for k, v in mesh.items() if k not in MESH_AXES
    }


def parse_run(
    config: ml_collections.ConfigDict,
    num_devices: int | None = None,
    *,
    check_shapes: bool = True,
) -> RunSpec:
    """Builds typed configs and checks shapes against meshes; raises one-line ConfigErrors.

    `check_shapes=False` skips the per-stage length/batch divisibility checks (for callers that
    change a stage's shape first and check it themselves, like `lwm plan --seq-len`)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    if "model" not in config:
        raise ConfigError("config has no `model` section")
    model = ModelConfig.from_dict(config.model)
    train = TrainConfig.from_dict(config.get("train"))
    raw_stages = config.get("stages") or []
    stages = resolve_stages(train, raw_stages, model.rope_theta, model.max_sequence_length)
    base_mesh = _mesh_dict(config)
    meshes = []
    for st in stages:
        sizes = dict(st.mesh) if st.mesh is not None else dict(base_mesh)
        shape = dict(zip(MESH_AXES, resolve_mesh_shape(sizes, num_devices)))
        meshes.append(shape)
        if check_shapes:
            check_stage_shapes(model, st, shape)
    data = config.get("data") or {}
    data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    if data.get("source", "synthetic") == "synthetic" and data.get("path"):
        raise ConfigError(
            f"data.path is {data['path']!r} but data.source is 'synthetic' (it would be "
            "ignored); add --config.data.source=dataset"
        )
    return RunSpec(config, model, train, stages, meshes, data)


def check_stage_shapes(model: ModelConfig, st: ResolvedStage, mesh: Mapping[str, int]) -> None:
    """One-line ConfigErrors for a batch or length the stage's mesh and attention cannot split."""
    where = f"stages[{st.index}]"
    sp, batch_par = mesh["sp"], mesh["dp"] * mesh["fsdp"]
    micro = st.batch_size // st.grad_accum
    if micro % batch_par:
        raise ConfigError(
            f"{where}: batch size {st.batch_size} (per microbatch {micro}) not divisible by "
            f"dp*fsdp = {batch_par}"
        )
    if st.seq_len % sp:
        raise ConfigError(f"{where}: seq_len {st.seq_len} not divisible by sp = {sp}")
    attn = model.attention
    if attn.backend == "ring":
        parts = sp * (2 if attn.layout == "zigzag" and sp > 1 else 1)
        for name in ("query_chunk_size", "key_chunk_size"):
            chunk = getattr(attn, name)
            per_part = st.seq_len // parts if st.seq_len % parts == 0 else 0
            if per_part == 0 or per_part % min(chunk, per_part):
                raise ConfigError(
                    f"{where}: seq_len {st.seq_len} not divisible by sp x {name} "
                    f"({sp} x {chunk}, layout {attn.layout}); pick seq_len as a multiple"
                )
    elif attn.backend == "blockwise":
        for name in ("query_chunk_size", "key_chunk_size"):
            chunk = min(getattr(attn, name), st.seq_len)
            if st.seq_len % chunk:
                raise ConfigError(f"{where}: seq_len {st.seq_len} not divisible by {name} {chunk}")


def check_resume_seq_len(meta: Mapping[str, Any], stages: list, workdir: pathlib.Path) -> None:
    """A stage resumed midway must keep its sequence length (its data and schedule depend on
    it); a finished stage may be followed by a longer one."""
    st = stages[int(meta.get("stage", 0))]
    saved = meta.get("seq_len")
    if saved is not None and int(meta.get("stage_step", 0)) < st.steps and saved != st.seq_len:
        raise LwmError(
            f"workdir {workdir}: checkpoint step {meta.get('step')} is inside stage "
            f"{st.index} trained at seq_len {saved}, the config now says seq_len {st.seq_len}; "
            f"keep seq_len {saved} to resume, or use a new workdir"
        )


def stage_model_config(model: ModelConfig, st: ResolvedStage) -> ModelConfig:
    return model.replace(rope_theta=st.rope_theta, max_sequence_length=st.max_sequence_length)


def stage_optimizer(train: TrainConfig, mdef: ModelDef) -> optax.GradientTransformation:
    """AdamW with clipping and the configured weight-decay mask over `mdef`'s params."""
    return make_optimizer(
        b1=train.b1,
        b2=train.b2,
        eps=train.eps,
        weight_decay=train.weight_decay,
        decay_mask=weight_decay_mask(
            mdef.abstract_pure_params(), train.weight_decay_exclude, decay_1d=train.decay_1d_params
        ),
        clip_norm=train.clip_norm,
    )


def stage_step_fn(
    train: TrainConfig,
    st: ResolvedStage,
    mdef: ModelDef,
    optimizer: optax.GradientTransformation,
    stage_start: int,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The (un-jitted) train step of stage `st`, whose first global step is `stage_start`."""
    schedule = make_schedule(
        st.schedule,
        lr=st.lr,
        steps=st.steps,
        warmup_steps=st.warmup_steps,
        end_lr_ratio=st.end_lr_ratio,
    )
    return make_train_step(
        mdef,
        optimizer,
        schedule,
        text_weight=train.text_loss_weight,
        vision_weight=train.vision_loss_weight,
        grad_accum=st.grad_accum,
        stage_start_step=stage_start,
    )


def param_fingerprint(mdef: ModelDef) -> str:
    """Hash of parameter paths, shapes and dtypes: what must match to resume from a checkpoint."""
    leaves = jax.tree_util.tree_leaves_with_path(mdef.abstract_pure_params())
    desc = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha256("\n".join(desc).encode()).hexdigest()[:16]


def make_data_iterator(spec: RunSpec, st: ResolvedStage, mesh, model: ModelConfig):
    """The data source named by `config.data.source` (default: synthetic)."""
    source = spec.data.get("source", "synthetic")
    seed = spec.train.seed + 1000 * st.index
    if source == "synthetic":
        from lwm.training.synthetic_data import make_synthetic_iterator

        return make_synthetic_iterator(
            spec.data,
            seq_len=st.seq_len,
            global_batch_size=st.batch_size,
            mesh=mesh,
            seed=seed,
            vocab_size=model.vocab_size,
            vision_vocab_size=model.vision_vocab_size,
        )
    try:
        from lwm.data.loader import make_train_iterator
    except ImportError as e:
        raise ConfigError(f"data.source {source!r} needs lwm.data.loader ({e})") from None
    data = spec.config.data
    if st.data:
        data = {**(data.to_dict() if hasattr(data, "to_dict") else dict(data)), **st.data}
    return make_train_iterator(
        data, seq_len=st.seq_len, global_batch_size=st.batch_size, mesh=mesh, seed=seed
    )


class Trainer:
    """Runs a parsed config in `workdir`. Every process of a job runs the same calls."""

    def __init__(
        self,
        spec: RunSpec,
        workdir: str | pathlib.Path,
        *,
        log: Callable[[str], None] | None = None,
        max_steps: int | None = None,
    ):
        self.spec = spec
        self.workdir = pathlib.Path(workdir).expanduser().resolve()
        self.primary = jax.process_index() == 0
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.max_steps = max_steps  # stop (with a checkpoint) after this global step; tests
        self.stage_starts = np.cumsum([0] + [s.steps for s in spec.stages]).tolist()
        self._peak_flops: float | None = spec.train.peak_flops or None

    # -- workdir ---------------------------------------------------------------------------

    def _refuse_foreign(self) -> None:
        """A workdir holding files that are not ours and no checkpoint is not touched."""
        if not self.workdir.is_dir():
            return
        foreign = [p.name for p in self.workdir.iterdir() if p.name not in OWN_FILES]
        if foreign:
            raise LwmError(
                f"workdir {self.workdir} is not empty and holds no lwm checkpoint "
                f"(found {sorted(foreign)[:3]}); use a new directory"
            )

    def _check_workdir(self, ckpt: Checkpointer, fingerprint: str) -> dict | None:
        """The resume metadata, or None for a fresh start; refuses what it must not touch."""
        step = ckpt.latest_step()
        if step is None:
            self._refuse_foreign()
            return None
        meta = ckpt.metadata(step)
        if meta.get("param_fingerprint") != fingerprint:
            saved = meta.get("model_config", {})
            raise LwmError(
                f"workdir {self.workdir} holds a checkpoint (step {step}) of a different model "
                f"(hidden_size {saved.get('hidden_size')}, layers {saved.get('num_layers')}, "
                f"vocab {saved.get('vocab_size')}); use a new workdir or the matching config"
            )
        if int(meta.get("stage", 0)) >= len(self.spec.stages):
            raise LwmError(
                f"workdir {self.workdir}: checkpoint is in stage {meta.get('stage')} but the "
                f"config "
                f"has only {len(self.spec.stages)} stages"
            )
        check_resume_seq_len(meta, self.spec.stages, self.workdir)
        return meta

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        spec = self.spec
        fingerprint = param_fingerprint(model_def(spec.model, None))
        if not (self.workdir / "checkpoints").is_dir():
            self._refuse_foreign()  # before creating anything in it
        self.workdir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(
            self.workdir / "checkpoints",
            keep=spec.train.keep,
            save_every=spec.train.save_every,
            async_save=spec.train.async_save,
            preserve_steps=self.stage_starts[1:],  # stage ends: later stages start from them
        )
        try:
            while True:  # again from the previous step when the chosen one fails to read
                resume = self._check_workdir(ckpt, fingerprint)
                writer = MetricsWriter(self.workdir / "metrics.jsonl") if self.primary else None
                if self.primary:
                    cfg_path = self.workdir / "config.json"
                    if resume is None or not cfg_path.exists():
                        cfg_path.write_text(spec.config.to_json(indent=2))
                    writer.truncate_after(int(resume["step"]) if resume else 0)
                    copy_tokenizer_to_workdir(spec.data, self.workdir, self.log)
                try:
                    return self._run_stages(ckpt, resume, fingerprint, writer)
                except UnreadableStepError:
                    continue  # reported and marked: latest_step() now skips it
        finally:
            ckpt.close()

    def _run_stages(self, ckpt, resume, fingerprint, writer) -> TrainResult:
        spec = self.spec
        start_stage, params, opt_state, rng = 0, None, None, None
        resume_mid_stage = False
        if resume is not None:
            start_stage = int(resume["stage"])
            if int(resume["stage_step"]) >= spec.stages[start_stage].steps:
                start_stage += 1  # the checkpoint is a finished stage: start the next one
                if start_stage == len(spec.stages):
                    self.log(f"lwm train: all {len(spec.stages)} stages already done")
                    return TrainResult(int(resume["step"]), start_stage - 1, False, {})
            else:
                resume_mid_stage = True
        result = None
        prev_stage_meta = resume
        for si in range(start_stage, len(spec.stages)):
            st = spec.stages[si]
            mesh = make_mesh(spec.mesh_sizes[si])
            mcfg = stage_model_config(spec.model, st)
            mdef = model_def(mcfg, mesh)
            optimizer = stage_optimizer(spec.train, mdef)
            st_sh = state_shardings(mdef, optimizer, mesh)
            data_state = None
            if resume_mid_stage or (params is None and prev_stage_meta is not None):
                # Restart: read the checkpoint directly onto this stage's mesh.
                target = abstract_state(mdef, optimizer, mesh)
                if not resume_mid_stage and st.reset_optimizer:
                    target = {k: v for k, v in target.items() if k != "opt_state"}
                    restored, _, data_state = ckpt.restore(
                        int(prev_stage_meta["step"]),
                        abstract_state=target["params"],
                        subtree="params",
                    )
                    step_val = int(prev_stage_meta["step"])
                    state = {
                        "step": jnp.asarray(step_val, jnp.int32),
                        "params": restored,
                        "opt_state": jax.jit(optimizer.init, out_shardings=st_sh["opt_state"])(
                            restored
                        ),
                        "rng": jnp.asarray(rng_data(spec.train.seed)),
                    }
                    data_state = None
                else:
                    state, _, data_state = ckpt.restore(
                        int(prev_stage_meta["step"]), abstract_state=target
                    )
                    if not resume_mid_stage:
                        data_state = None
                state = jax.device_put(state, st_sh)
            elif params is None:
                p = init_params(mdef, spec.train.seed, mesh)
                state = {
                    "step": jnp.asarray(0, jnp.int32),
                    "params": p,
                    "opt_state": jax.jit(optimizer.init, out_shardings=st_sh["opt_state"])(p),
                    "rng": jnp.asarray(rng_data(spec.train.seed)),
                }
                state = jax.device_put(state, st_sh)
            else:
                # Stage boundary within this process: carry params (and maybe moments) over.
                p = jax.device_put(params, st_sh["params"])
                o = (
                    jax.jit(optimizer.init, out_shardings=st_sh["opt_state"])(p)
                    if st.reset_optimizer
                    else jax.device_put(opt_state, st_sh["opt_state"])
                )
                state = {
                    "step": jnp.asarray(self.stage_starts[si], jnp.int32),
                    "params": p,
                    "opt_state": o,
                    "rng": jax.device_put(rng, st_sh["rng"]),
                }
            resume_mid_stage = False
            result = self._run_stage(
                si, st, mesh, mdef, optimizer, st_sh, state, data_state, ckpt, fingerprint, writer
            )
            if result.preempted:
                return result
            params, opt_state, rng = (
                result.state["params"],
                result.state["opt_state"],
                result.state["rng"],
            )
            prev_stage_meta = None
        return TrainResult(result.step, result.stage, False, result.last_metrics)

    def _run_stage(
        self, si, st, mesh, mdef, optimizer, st_sh, state, data_state, ckpt, fingerprint, writer
    ):
        spec, train = self.spec, self.spec.train
        stage_start = self.stage_starts[si]
        stage_end = stage_start + st.steps
        step_fn = stage_step_fn(train, st, mdef, optimizer, stage_start)
        jitted = jit_train_step(
            step_fn, st_sh, batch_shardings(mesh, st.batch_size, st.seq_len), mesh
        )
        data = make_data_iterator(spec, st, mesh, mdef.config)
        if data_state is not None:
            data.set_state(data_state)
        step = int(jax.device_get(state["step"]))
        flops_per_token = flops_lib.train_flops_per_token(mdef.config, st.seq_len)
        if self.primary:
            self.log(
                f"lwm train: stage {si + 1}/{len(spec.stages)} seq_len {st.seq_len} "
                f"batch {st.batch_size} rope_theta {st.rope_theta:g} mesh "
                f"{dict(mesh.shape)} params {count_params(state['params']):,} "
                f"steps {step - stage_start}/{st.steps}"
            )
        if self._peak_flops is None:
            local = flops_lib.measure_matmul_peak(None if jax.process_count() > 1 else mesh)
            self._peak_flops = local * (jax.process_count() if jax.process_count() > 1 else 1)
        bar = None
        if self.primary and train.progress_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=st.steps,
                initial=step - stage_start,
                desc=f"stage {si}",
                leave=False,
                dynamic_ncols=True,
            )

        def meta(stage_step):
            return {
                "step": step,
                "stage": si,
                "stage_step": stage_step,
                "param_fingerprint": fingerprint,
                "model_config": mdef.config.to_dict(),
                "mesh": dict(mesh.shape),
                "seq_len": st.seq_len,
            }

        last: dict[str, float] = {}
        preempted = False
        t_last, steps_since = time.perf_counter(), 0
        with StopRequest() as stop:
            while step < stage_end:
                batch = next(data)
                state, metrics = jitted(state, batch)
                step += 1
                steps_since += 1
                if bar is not None:
                    bar.update(1)
                if step % train.log_every == 0 or step == stage_end:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = time.perf_counter() - t_last
                    tps = steps_since * st.batch_tokens / dt if dt > 0 else float("nan")
                    m.update(
                        tokens_per_s=tps,
                        mfu=flops_lib.mfu(tps, flops_per_token, self._peak_flops or 0.0),
                    )
                    t_last, steps_since = time.perf_counter(), 0
                    last = m
                    if writer is not None:
                        writer.write({"step": step, "stage": si, "seq_len": st.seq_len, **m})
                    if bar is not None:
                        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
                stage_done = step == stage_end
                if stage_done:
                    ckpt.save(
                        step,
                        state,
                        metadata=meta(st.steps),
                        data_state=data.get_state(),
                        force=True,
                    )
                elif ckpt.should_save(step):
                    ckpt.save(
                        step, state, metadata=meta(step - stage_start), data_state=data.get_state()
                    )
                if not stage_done and (
                    _any_process(stop.requested)
                    or (self.max_steps is not None and step >= self.max_steps)
                ):
                    ckpt.save(
                        step,
                        state,
                        metadata=meta(step - stage_start),
                        data_state=data.get_state(),
                        force=True,
                    )
                    ckpt.wait()
                    preempted = True
                    if self.primary:
                        why = stop.name if stop.requested else "max_steps"
                        self.log(f"lwm train: {why}: saved step {step}, exiting")
                    break
        if bar is not None:
            bar.close()
        ckpt.wait()
        if self.primary and not preempted:
            records = read_metrics(self.workdir / "metrics.jsonl")
            if records:
                plot_loss_curve(records, self.workdir / "loss_curve.png")
            loss = last.get("loss", math.nan)
            self.log(f"lwm train: stage {si + 1} done at step {step}, loss {loss:.4f}")
        return _StageResult(step, si, preempted, last, state)


@dataclasses.dataclass
class _StageResult:
    step: int
    stage: int
    preempted: bool
    last_metrics: dict[str, float]
    state: dict


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Parses, validates (before any compute) and runs `config` in `workdir`."""
    spec = parse_run(config)
    result = Trainer(spec, workdir, log=log, max_steps=max_steps).run()
    return result
