"""Perplexity of a fixed final segment as the context before it grows.

For each window end `E` (spread over the text) and each context length `L`, the model reads the
`L` tokens ending at `E` and we score only its last `segment` tokens. The scored tokens are the
same at every length, so the curve shows how much the extra context helps: a model that uses its
context gets lower perplexity at longer lengths; one that breaks beyond its trained length rises.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from lwm.errors import LwmError


@dataclasses.dataclass(frozen=True)
class PerplexityPoint:
    length: int
    nll: float
    """Mean negative log-likelihood (nats) of the scored tokens."""
    tokens: int
    """Tokens scored (segment x windows)."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def window_ends(num_tokens: int, longest: int, windows: int) -> list[int]:
    """`windows` distinct end offsets spread evenly over `[longest, num_tokens]`."""
    if num_tokens < longest:
        raise LwmError(f"the text has {num_tokens} tokens, fewer than the longest length {longest}")
    if windows < 1:
        raise LwmError(f"windows must be >= 1, got {windows}")
    ends = np.linspace(longest, num_tokens, windows).round().astype(int)
    return sorted(set(int(e) for e in ends))


def segment_nll_fn(model) -> Callable[[np.ndarray, int], np.ndarray]:
    """`(window [L + 1], segment) -> nll [segment]`: the model reads the first L tokens and the
    last `segment` of its L predictions are scored (jitted per length; logits stay on device)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def nll_of(state, tokens_bt, target_bt):
        logits = nnx.merge(graphdef, state)(tokens_bt).logits  # [1, L, V]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, target_bt[..., None], axis=-1)[..., 0]

    def run(window: np.ndarray, segment: int) -> np.ndarray:
        window = np.asarray(window, np.int32).reshape(1, -1)
        nll = nll_of(state, jnp.asarray(window[:, :-1]), jnp.asarray(window[:, 1:]))
        return np.asarray(nll)[0, -segment:]

    return run


def context_perplexity(
    nll_fn: Callable[[np.ndarray, int], np.ndarray],
    tokens: Sequence[int],
    lengths: Sequence[int],
    *,
    segment: int,
    windows: int,
    progress: bool = False,
) -> list[PerplexityPoint]:
    """One PerplexityPoint per length; `nll_fn(window_tokens, segment)` scores a window whose
    last `segment` targets are counted. A window of length L holds L tokens plus the next one
    (the last target), so the scored targets are identical across lengths."""
    if any(n <= segment for n in lengths):
        raise LwmError(f"every length must exceed the scored segment ({segment} tokens)")
    tokens = np.asarray(tokens, np.int32)
    ends = window_ends(len(tokens) - 1, max(lengths), windows)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(lengths) * len(ends), desc="perplexity", dynamic_ncols=True)
    out = []
    for n in lengths:
        total, count = 0.0, 0
        for e in ends:
            nll = nll_fn(tokens[e - n : e + 1], segment)
            total += float(np.sum(nll, dtype=np.float64))
            count += len(nll)
            if bar is not None:
                bar.update(1)
        out.append(PerplexityPoint(int(n), total / count, count))
    if bar is not None:
        bar.close()
    return out


def plot_perplexity(
    points: Sequence[PerplexityPoint],
    path: str | os.PathLike,
    *,
    title: str = "Perplexity of the last segment vs context length",
    trained_length: int | None = None,
) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [p.length for p in points]
    ax.plot(xs, [p.perplexity for p in points], "o-", color="#2a6f97")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [_fmt(x) for x in xs])
    if trained_length:
        ax.axvline(
            trained_length, color="gray", ls="--", label=f"trained to {_fmt(trained_length)}"
        )
        ax.legend()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _fmt(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
