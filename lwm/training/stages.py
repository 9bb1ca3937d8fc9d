"""Stage transitions: what a stage is built from (model config, optimizer, step) and the train
state it starts with.

`enter_stage` is the one place a stage's starting state is decided. It comes from one of three
sources, each in one function: `init_state` (fresh parameters: the run's first stage with nothing
on disk), `restore_state` (the workdir's latest checkpoint: a restart, mid-stage or at a stage
boundary) or `carry_state` (the previous stage's final state in this process).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lwm.checkpoint import Checkpointer
from lwm.models.config import ModelConfig
from lwm.sharding import make_mesh
from lwm.training.config import ResolvedStage, TrainConfig
from lwm.training.init_from import initial_params
from lwm.training.loss import LossFn, lm_loss
from lwm.training.optimizer import make_optimizer, weight_decay_mask
from lwm.training.run_spec import RunSpec
from lwm.training.schedule import make_schedule
from lwm.training.train_state import ModelDef, model_def, rng_data
from lwm.training.train_step import abstract_state, make_train_step, state_shardings

# -- per-stage factories (also used by `lwm plan` and scripts/bench_train.py) ----------------


def stage_model_config(model: ModelConfig, st: ResolvedStage) -> ModelConfig:
    """The model as stage `st` trains it (its RoPE theta and scaling, and max length)."""
    return model.replace(
        rope_theta=st.rope_theta,
        rope_scaling=st.rope_scaling,
        max_sequence_length=st.max_sequence_length,
    )


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
    loss_fn: LossFn = lm_loss,
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
        loss_fn=loss_fn,
    )


def param_fingerprint(mdef: ModelDef) -> str:
    """Hash of parameter paths, shapes and dtypes: what must match to resume from a checkpoint."""
    leaves = jax.tree_util.tree_leaves_with_path(mdef.abstract_pure_params())
    desc = sorted(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves)
    return hashlib.sha256("\n".join(desc).encode()).hexdigest()[:16]


# -- a stage's static half ---------------------------------------------------------------------


@dataclasses.dataclass
class StageContext:
    """What a stage trains with, built before its state: mesh, model, optimizer, shardings, and
    its global step range `[start, end)`."""

    spec: RunSpec
    stage: ResolvedStage
    mesh: Mesh
    mdef: ModelDef
    optimizer: optax.GradientTransformation
    shardings: dict
    start: int
    end: int

    @property
    def index(self) -> int:
        return self.stage.index

    @property
    def num_stages(self) -> int:
        return len(self.spec.stages)


def build_stage(
    spec: RunSpec,
    index: int,
    start: int,
    *,
    stage: ResolvedStage | None = None,
    mesh_sizes: dict[str, int] | None = None,
) -> StageContext:
    """The mesh, model definition (built once, abstractly), optimizer and state shardings of
    stage `index`; `stage` / `mesh_sizes` replace its resolved stage and mesh (`lwm plan`)."""
    st = spec.stages[index] if stage is None else stage
    mesh = make_mesh(spec.mesh_sizes[index] if mesh_sizes is None else mesh_sizes)
    mdef = model_def(stage_model_config(spec.model, st), mesh)
    optimizer = stage_optimizer(spec.train, mdef)
    shardings = state_shardings(mdef, optimizer, mesh)
    return StageContext(spec, st, mesh, mdef, optimizer, shardings, start, start + st.steps)


# -- the state a stage starts from ---------------------------------------------------------------


def _new_state(ctx: StageContext, params: Any, opt_state: Any = None, rng: Any = None) -> dict:
    """A state at the stage's first step; fresh optimizer moments / rng where none are given."""
    sh = ctx.shardings
    if opt_state is None:
        opt_state = jax.jit(ctx.optimizer.init, out_shardings=sh["opt_state"])(params)
    if rng is None:
        rng = jnp.asarray(rng_data(ctx.spec.train.seed))
    state = {"step": jnp.asarray(ctx.start, jnp.int32), "params": params, "opt_state": opt_state}
    return jax.device_put({**state, "rng": rng}, sh)


def init_state(
    ctx: StageContext, log: Callable[[str], None] | None = None, *, strict: bool = False
) -> dict:
    """A run's first state, directly in its shardings: freshly initialised parameters (seed
    `train.seed`), or those of `train.init_from` (lwm/training/init_from.py; `strict`: its newest
    step must be readable); fresh moments."""
    params = initial_params(ctx.spec.train, ctx.mdef, ctx.mesh, log=log, strict=strict)
    return _new_state(ctx, params)


def restore_state(
    ctx: StageContext, ckpt: Checkpointer, step: int | None = None, *, params_only: bool = False
) -> tuple[dict, dict | None]:
    """The latest checkpoint, read directly onto this stage's mesh: the full state and the data
    iterator's state, or (`params_only`) the params and rng in a state with fresh moments (the
    rng as a carried state keeps it: a restart at a stage boundary draws the keys an
    uninterrupted run does)."""
    target = abstract_state(ctx.mdef, ctx.optimizer, ctx.mesh, ctx.shardings)
    if params_only:
        params, _, _ = ckpt.restore(step, abstract_state=target["params"], subtree="params")
        rng, _, _ = ckpt.restore(step, abstract_state=target["rng"], subtree="rng")
        return _new_state(ctx, params, rng=rng), None
    state, _, data_state = ckpt.restore(step, abstract_state=target)
    return jax.device_put(state, ctx.shardings), data_state


def carry_state(ctx: StageContext, prev: dict) -> dict:
    """The previous stage's final state moved onto this stage's shardings (moments kept unless
    the stage resets the optimizer)."""
    sh = ctx.shardings
    params = jax.device_put(prev["params"], sh["params"])
    opt = None if ctx.stage.reset_optimizer else jax.device_put(prev["opt_state"], sh["opt_state"])
    return _new_state(ctx, params, opt, prev["rng"])


def enter_stage(
    ctx: StageContext,
    ckpt: Checkpointer,
    *,
    resume: dict | None = None,
    prev_state: dict | None = None,
    log: Callable[[str], None] | None = None,
    strict: bool = False,
) -> tuple[dict, dict | None]:
    """The state stage `ctx` starts from, and the data-iterator state to continue (None: the
    stage's data from its beginning).

    `prev_state`: the previous stage's final state in this process. `resume`: the metadata of the
    workdir's latest checkpoint, when this process starts from it (it is of this stage, then
    training continues inside it, or of the previous, finished one). `strict`: `train.init_from`'s
    newest step must be readable (`--strict`).
    """
    if prev_state is not None:
        return carry_state(ctx, prev_state), None
    if resume is None:
        return init_state(ctx, log, strict=strict), None
    step = int(resume["step"])  # the step the workdir check chose (an unreadable newer one skipped)
    if int(resume["stage"]) == ctx.index:  # mid-stage restart: everything as it was
        return restore_state(ctx, ckpt, step)
    state, _ = restore_state(ctx, ckpt, step, params_only=ctx.stage.reset_optimizer)
    return state, None  # a finished stage's data position is not this stage's
