"""Held-out loss during training: the eval hook (`train.eval_every`, `train.eval_batches`).

The eval loss is the train loss's definition applied to the held-out batches taken together as
one batch: text and vision cross-entropy each averaged over their own tokens of all eval
batches, combined with `train.text_loss_weight` / `vision_loss_weight` renormalized over the
terms present. Every evaluation in a stage reads the same batches (the eval iterator is rewound),
so successive values are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lwm.training.data_source import make_eval_iterator
from lwm.training.hooks import Hooks, StageInfo, StepInfo
from lwm.training.loss import METRIC_SUMS, LossFn, lm_loss, loss_normalizer
from lwm.training.run_spec import RunSpec
from lwm.training.train_state import ModelDef, replicated
from lwm.training.train_step import batch_shardings, make_loss_fn

EVAL_KEY = 0
"""Seed of the eval step's (fixed) PRNG key."""
SUM_KEYS = ("text_nll", "text_tokens", "vision_nll", "vision_tokens", "correct")


def make_eval_step(
    mdef: ModelDef,
    *,
    text_weight: float,
    vision_weight: float,
    grad_accum: int = 1,
    loss_fn: LossFn = lm_loss,
) -> Callable[[dict, dict], dict[str, jax.Array]]:
    """`(params, batch) -> sums` (SUM_KEYS): summed NLL and token counts per modality and the
    number of correct argmax predictions of `loss_fn` (the trainer's); microbatched like the
    train step. Its key is fixed: every evaluation sees the same randomness, if any."""
    params_loss = make_loss_fn(mdef, loss_fn)
    has_vision = mdef.config.has_vision

    def eval_fn(params, batch):
        norm = loss_normalizer(
            batch["loss_mask"],
            batch["target_vision_mask"] if has_vision else None,
            text_weight=text_weight,
            vision_weight=vision_weight,
        )
        micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

        def body(acc, mb):
            _, s = params_loss(params, mb, norm, jax.random.key(EVAL_KEY))
            return jax.tree.map(jnp.add, acc, s), None

        zero = {k: jnp.zeros((), jnp.float32) for k in METRIC_SUMS}
        sums, _ = jax.lax.scan(body, zero, micro)
        # The loss terms are sums divided by the batch's token counts: undo that to add batches.
        tokens = norm.text_tokens + norm.vision_tokens
        return {
            "text_nll": sums["text_loss"] * jnp.maximum(norm.text_tokens, 1.0),
            "text_tokens": norm.text_tokens,
            "vision_nll": sums["vision_loss"] * jnp.maximum(norm.vision_tokens, 1.0),
            "vision_tokens": norm.vision_tokens,
            "correct": sums["accuracy"] * jnp.maximum(tokens, 1.0),
        }

    return eval_fn


def eval_metrics(
    sums: dict[str, float], *, text_weight: float, vision_weight: float
) -> dict[str, float]:
    """`eval_loss`, `eval_text_loss`, `eval_vision_loss`, `eval_accuracy` from summed terms."""
    tt, vt = sums["text_tokens"], sums["vision_tokens"]
    text = sums["text_nll"] / tt if tt > 0 else 0.0
    vision = sums["vision_nll"] / vt if vt > 0 else 0.0
    wt, wv = (text_weight if tt > 0 else 0.0), (vision_weight if vt > 0 else 0.0)
    loss = (wt * text + wv * vision) / max(wt + wv, 1e-12)
    return {
        "eval_loss": loss,
        "eval_text_loss": text,
        "eval_vision_loss": vision,
        "eval_accuracy": sums["correct"] / max(tt + vt, 1.0),
    }


class EvalHook:
    """Every `train.eval_every` steps (and at each stage's last step): the loss of the current
    params on `train.eval_batches` held-out batches, added to the step's metric record."""

    def __init__(self, spec: RunSpec, loss_fn: LossFn = lm_loss):
        self.spec = spec
        self.loss_fn = loss_fn
        self.every = spec.train.eval_every
        self.num_batches = spec.train.eval_batches
        self._data = None

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.start, event="stage_start")
        hooks.add(self.step, every=self.every)
        hooks.add(self.end, event="stage_end")

    def start(self, info: StageInfo) -> None:
        ctx, train = info.ctx, self.spec.train
        step = make_eval_step(
            ctx.mdef,
            text_weight=train.text_loss_weight,
            vision_weight=train.vision_loss_weight,
            grad_accum=ctx.stage.grad_accum,
            loss_fn=self.loss_fn,
        )
        self._fn = jax.jit(
            step,
            in_shardings=(
                ctx.shardings["params"],
                batch_shardings(ctx.mesh, ctx.stage.batch_size, ctx.stage.seq_len),
            ),
            out_shardings=replicated(ctx.mesh),
        )
        self._data = make_eval_iterator(self.spec, ctx.stage, ctx.mesh, ctx.mdef.config)
        self._first = self._data.get_state()

    def evaluate(self, params: dict) -> dict[str, float]:
        """The eval metrics of `params` on this stage's held-out batches."""
        self._data.set_state(self._first)
        totals = dict.fromkeys(SUM_KEYS, 0.0)
        for _ in range(self.num_batches):
            sums = jax.device_get(self._fn(params, next(self._data)))
            for k in SUM_KEYS:
                totals[k] += float(np.asarray(sums[k], np.float64))
        train = self.spec.train
        return eval_metrics(
            totals, text_weight=train.text_loss_weight, vision_weight=train.vision_loss_weight
        )

    def step(self, info: StepInfo) -> None:
        info.record.update(self.evaluate(info.state["params"]))

    def end(self, info: StageInfo) -> None:  # noqa: ARG002 - hook signature
        close = getattr(self._data, "close", None)
        if close is not None:
            close()
        self._data = None
