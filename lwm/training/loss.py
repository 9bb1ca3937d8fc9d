"""Cross-entropy with a per-token loss mask, split into text and vision terms (LWM).

Each term is the mean over its own tokens; the loss is their weighted mean over the terms present
in the batch. To make gradient accumulation exact, the per-microbatch functions return *sums*
divided by token counts of the whole global batch (`LossNormalizer`), so summing microbatches
gives the same objective as one big batch.

`lm_loss` is the trainer's default loss (`Trainer(spec, loss_fn=...)` takes any `LossFn`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def token_cross_entropy(
    logits_btv: jax.Array, targets_bt: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood `[B, T]` (fp32) and whether the argmax is right."""
    logits = logits_btv.astype(jnp.float32)
    logz_bt = jax.nn.logsumexp(logits, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits, targets_bt[..., None], axis=-1)[..., 0]
    correct_bt = jnp.argmax(logits, axis=-1) == targets_bt
    return logz_bt - target_logit_bt, correct_bt


@dataclasses.dataclass(frozen=True)
class LossNormalizer:
    """Token counts of the global batch and the renormalized term weights."""

    text_tokens: jax.Array
    vision_tokens: jax.Array
    text_weight: jax.Array
    vision_weight: jax.Array


def loss_normalizer(
    loss_mask_bt: jax.Array,
    target_vision_mask_bt: jax.Array | None,
    *,
    text_weight: float,
    vision_weight: float,
) -> LossNormalizer:
    """Counts masked tokens per modality; a term absent from the batch gets weight 0."""
    mask = loss_mask_bt.astype(jnp.float32)
    if target_vision_mask_bt is None:
        vision = jnp.zeros_like(mask)
    else:
        vision = mask * target_vision_mask_bt.astype(jnp.float32)
    text_tokens, vision_tokens = jnp.sum(mask - vision), jnp.sum(vision)
    wt = jnp.where(text_tokens > 0, text_weight, 0.0)
    wv = jnp.where(vision_tokens > 0, vision_weight, 0.0)
    total = jnp.maximum(wt + wv, 1e-12)
    return LossNormalizer(text_tokens, vision_tokens, wt / total, wv / total)


def split_loss_terms(
    text_logits_btv: jax.Array,
    vision_logits_btv: jax.Array | None,
    targets_bt: jax.Array,
    loss_mask_bt: jax.Array,
    target_vision_mask_bt: jax.Array | None,
    norm: LossNormalizer,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The (normalized) loss contribution of a microbatch and its metric sums.

    Targets at vision positions index the vision vocabulary, elsewhere the text vocabulary.
    Returns `loss` and sums: text_nll, vision_nll, correct (all already divided by the global
    token counts so microbatch values add up).
    """
    mask = loss_mask_bt.astype(jnp.float32)
    if target_vision_mask_bt is None or vision_logits_btv is None:
        vis = jnp.zeros_like(mask)
    else:
        vis = target_vision_mask_bt.astype(jnp.float32)
    text_mask, vision_mask = mask * (1.0 - vis), mask * vis

    text_targets = jnp.where(vis > 0, 0, targets_bt)
    text_nll, text_ok = token_cross_entropy(text_logits_btv, text_targets)
    text_sum = jnp.sum(text_nll * text_mask) / jnp.maximum(norm.text_tokens, 1.0)
    correct = jnp.sum(text_ok * text_mask)
    if vision_logits_btv is not None:
        vision_targets = jnp.where(vis > 0, targets_bt, 0)
        vision_nll, vision_ok = token_cross_entropy(vision_logits_btv, vision_targets)
        vision_sum = jnp.sum(vision_nll * vision_mask) / jnp.maximum(norm.vision_tokens, 1.0)
        correct = correct + jnp.sum(vision_ok * vision_mask)
    else:
        vision_sum = jnp.zeros((), jnp.float32)
    all_tokens = jnp.maximum(norm.text_tokens + norm.vision_tokens, 1.0)
    loss = norm.text_weight * text_sum + norm.vision_weight * vision_sum
    return loss, {
        "text_loss": text_sum,
        "vision_loss": vision_sum,
        "accuracy": correct / all_tokens,
    }


LossFn = Callable[
    [Any, dict[str, jax.Array], LossNormalizer, jax.Array], tuple[jax.Array, dict[str, jax.Array]]
]
"""`loss_fn(model, micro, norm, key) -> (loss, sums)`: the loss of one microbatch `micro` (the
batch keys of `lwm.data.packing.BATCH_KEYS`) under `model` (the `Transformer` with the params
being differentiated). `norm` holds the token counts of the whole global batch: divide by them so
microbatch values add up. `key`: this step's (and microbatch's) PRNG key. `sums` must hold
`text_loss`, `vision_loss` and `accuracy` (logged, and added up by the eval hook)."""

METRIC_SUMS = ("text_loss", "vision_loss", "accuracy")


def lm_loss(
    model: Any, micro: dict[str, jax.Array], norm: LossNormalizer, key: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token cross-entropy, split into text and vision terms (the default `LossFn`)."""
    del key  # deterministic: no dropout
    has_vision = model.config.has_vision
    kwargs = dict(
        positions_bt=micro["positions"],
        segment_ids_bt=micro["segment_ids"],
        vision_mask_bt=micro["vision_mask"].astype(bool) if has_vision else None,
    )
    out = model(micro["tokens"], output="both" if has_vision else "text", **kwargs)
    return split_loss_terms(
        out.logits,
        out.vision_logits,
        micro["targets"],
        micro["loss_mask"],
        micro["target_vision_mask"] if has_vision else None,
        norm,
    )
