"""The train step: a pure function `(state, batch) -> (state, metrics)`, jitted with explicit
in/out shardings and the state donated.

Gradient accumulation splits the global batch into `grad_accum` microbatches along the batch axis
and scans over them; losses are normalized by the token counts of the whole batch, so the update
equals the single-batch one up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from lwm.data.packing import BATCH_KEYS
from lwm.sharding import logical_to_sharding
from lwm.training.loss import METRIC_SUMS, LossFn, lm_loss, loss_normalizer
from lwm.training.train_state import ModelDef, replicated


def batch_shardings(mesh: Mesh, batch_size: int, seq_len: int) -> dict[str, NamedSharding]:
    """Every batch array is `[B, T]`, sharded batch over (dp, fsdp) and length over sp."""
    s = logical_to_sharding(("batch", "length"), (batch_size, seq_len), mesh)
    return {k: s for k in BATCH_KEYS}


def make_loss_fn(mdef: ModelDef, loss_fn: LossFn = lm_loss) -> Callable:
    """`(params, micro, norm, key) -> (loss, metric sums)`: `loss_fn` on the model holding
    `params` (the pure dict being differentiated)."""

    def params_loss(params, micro, norm, key):
        return loss_fn(mdef.merge(params), micro, norm, key)

    return params_loss


def step_key(state: dict) -> jax.Array:
    """This step's PRNG key: the state's rng folded with the step. The folded key is also the
    next state's rng, so the stream advances every step and, being saved with the state, a
    resumed run draws the same keys as an uninterrupted one (exact resume); the rng leaf keeps
    its (2,) uint32 shape, so older checkpoints restore unchanged."""
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def make_train_step(
    mdef: ModelDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    text_weight: float,
    vision_weight: float,
    grad_accum: int = 1,
    stage_start_step: int = 0,
    loss_fn: LossFn = lm_loss,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The un-jitted step; see `jit_train_step`. The learning rate at global step `s` is
    `schedule(s - stage_start_step)`; `loss_fn` (default `lm_loss`) is differentiated on each
    microbatch, with the key `fold_in(step key, microbatch index)`."""
    grad_fn = jax.value_and_grad(make_loss_fn(mdef, loss_fn), has_aux=True)

    def step_fn(state, batch):
        norm = loss_normalizer(
            batch["loss_mask"],
            batch["target_vision_mask"] if mdef.config.has_vision else None,
            text_weight=text_weight,
            vision_weight=vision_weight,
        )
        params = state["params"]
        key = step_key(state)
        if grad_accum == 1:
            (loss, sums), grads = grad_fn(params, batch, norm, key)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch
            )

            def body(carry, xs):
                mb, i = xs
                (l, s), g = grad_fn(params, mb, norm, jax.random.fold_in(key, i))
                acc_l, acc_s, acc_g = carry
                return (
                    acc_l + l,
                    jax.tree.map(jnp.add, acc_s, s),
                    jax.tree.map(jnp.add, acc_g, g),
                ), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            zero_sums = {k: jnp.zeros((), jnp.float32) for k in METRIC_SUMS}
            (loss, sums, grads), _ = jax.lax.scan(
                body,
                (jnp.zeros((), jnp.float32), zero_sums, zeros),
                (micro, jnp.arange(grad_accum)),
            )
        grad_norm = optax.global_norm(grads)
        lr = jnp.asarray(schedule(state["step"] - stage_start_step), jnp.float32)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        updates = jax.tree.map(lambda u, p: (-lr * u).astype(p.dtype), updates, params)
        new_params = optax.apply_updates(params, updates)
        new_state = {
            "step": state["step"] + 1,
            "params": new_params,
            "opt_state": opt_state,
            "rng": jax.random.key_data(key),
        }
        metrics = {
            "loss": loss,
            **sums,
            "grad_norm": grad_norm,
            "lr": lr,
            "loss_tokens": norm.text_tokens + norm.vision_tokens,
        }
        return new_state, metrics

    return step_fn


def state_shardings(mdef: ModelDef, optimizer: optax.GradientTransformation, mesh: Mesh) -> dict:
    """Shardings of the whole train state: optimizer moments follow their params."""
    p_shard = mdef.param_shardings(mesh)
    abstract_params = mdef.abstract_pure_params()
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    rep = replicated(mesh)
    opt_shard = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, p_shard, transform_non_params=lambda _: rep
    )
    return {"step": rep, "params": p_shard, "opt_state": opt_shard, "rng": rep}


def abstract_state(
    mdef: ModelDef,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    shardings: dict | None = None,
) -> dict:
    """ShapeDtypeStructs with shardings (`state_shardings`, unless given) for the train state
    (restore target, AOT compile)."""
    shardings = state_shardings(mdef, optimizer, mesh) if shardings is None else shardings
    params = mdef.abstract_pure_params()
    shapes = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": params,
        "opt_state": jax.eval_shape(optimizer.init, params),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )


def jit_train_step(
    step_fn: Callable, state_sh: dict, batch_sh: dict, mesh: Mesh
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """Jits with the state donated; metrics come back replicated."""
    return jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=(0,),
    )
