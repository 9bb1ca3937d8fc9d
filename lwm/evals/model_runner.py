"""Loading a checkpoint for evaluation and answering prompts with it (greedy, KV-cached)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lwm.errors import LwmError


def eval_mesh(mesh_spec: str | None, backend: str):
    """The mesh given as `sp=8,...`; without one, ring-attention checkpoints get every device on
    `sp` (the sequence is what grows in these evals) and the others run on one device."""
    from lwm.inference.runtime import parse_mesh

    if mesh_spec:
        return parse_mesh(mesh_spec)
    if backend == "ring":
        import jax

        return parse_mesh(f"sp={jax.device_count()}")
    return None


def load_eval_model(
    checkpoint: str | os.PathLike,
    *,
    mesh_spec: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
):
    """`(model, mesh)` for `checkpoint` (a model checkpoint or a training workdir); `strict`:
    an unreadable newest step is an error instead of a fallback (`--strict`)."""
    from lwm.models.io import load_model, read_model_config

    cfg = read_model_config(existing_checkpoint(checkpoint), strict=strict)
    backend = (overrides or {}).get("attention", {}).get("backend", cfg.attention.backend)
    mesh = eval_mesh(mesh_spec, backend)
    model = load_model(
        existing_checkpoint(checkpoint), mesh=mesh, overrides=overrides, strict=strict
    )
    return model, mesh


def existing_checkpoint(checkpoint: str | os.PathLike) -> str:
    if not os.path.exists(checkpoint):
        raise LwmError(f"checkpoint not found: {checkpoint}")
    return str(checkpoint)


class SamplerAnswerer:
    """Greedy answers from the project's KV-cache sampler, stopping at any of `eos_id` (an id,
    several ids, or None: `lwm.inference.sampling.EosIds`)."""

    def __init__(self, model, *, mesh=None, eos_id=None, prefill_chunk: int = 512):
        from lwm.inference.sampler import Sampler

        self.sampler = Sampler(model, mesh=mesh, prefill_chunk=prefill_chunk)
        self.eos_id = eos_id
        self.max_len = model.config.max_sequence_length

    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        vision_masks: Sequence[Sequence[bool]] | None = None,
    ) -> list[list[int]]:
        """`vision_masks` marks each prompt's vision tokens (video prompts)."""
        longest = max(len(p) for p in prompts)
        steps = max(1, min(max_new_tokens, self.max_len - longest))
        return self.sampler.generate(
            [list(p) for p in prompts],
            max_new_tokens=steps,
            eos_id=self.eos_id,
            vision_masks=vision_masks,
        )
