"""The trivial tokenizer a VQGAN must beat: each p x p patch -> its mean colour, quantized to a
k-entry palette learned by k-means over training patch means. Spends the same tokens as a VQGAN
with downsampling factor p and codebook size k (one token per patch)."""

from __future__ import annotations

import numpy as np


def patch_means(frames: np.ndarray, patch: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, H/p, W/p, 3] per-patch mean colours."""
    n, h, w, c = frames.shape
    x = frames.astype(np.float32).reshape(n, h // patch, patch, w // patch, patch, c)
    return x.mean(axis=(2, 4))


def _nearest(x_nd: np.ndarray, centers_kd: np.ndarray) -> np.ndarray:
    d = (x_nd**2).sum(1, keepdims=True) - 2 * x_nd @ centers_kd.T + (centers_kd**2).sum(1)
    return np.argmin(d, axis=1)


def kmeans(x_nd: np.ndarray, k: int, *, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; empty clusters re-seeded from far points."""
    rng = np.random.default_rng(seed)
    x_nd = np.asarray(x_nd, np.float64)
    k = min(k, len(np.unique(x_nd, axis=0)))
    centers = [x_nd[rng.integers(len(x_nd))]]
    d2 = ((x_nd - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        c = x_nd[rng.choice(len(x_nd), p=d2 / d2.sum())] if d2.sum() > 0 else x_nd[0]
        centers.append(c)
        d2 = np.minimum(d2, ((x_nd - c) ** 2).sum(1))
    centers = np.stack(centers)
    for _ in range(iters):
        assign = _nearest(x_nd, centers)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x_nd)
        counts = np.bincount(assign, minlength=len(centers))
        empty = counts == 0
        centers[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            far = np.argsort(((x_nd - centers[assign]) ** 2).sum(1))[-empty.sum() :]
            centers[empty] = x_nd[far]
    return centers.astype(np.float32)


class PatchMeanTokenizer:
    """fit(train frames) -> palette; encode -> codes [N, H/p, W/p]; decode -> uint8 frames."""

    def __init__(self, patch: int, codebook_size: int, *, seed: int = 0):
        self.patch = patch
        self.codebook_size = codebook_size
        self.seed = seed
        self.palette: np.ndarray | None = None

    def fit(self, frames: np.ndarray) -> PatchMeanTokenizer:
        means = patch_means(frames, self.patch).reshape(-1, 3)
        self.palette = kmeans(means, self.codebook_size, seed=self.seed)
        return self

    def encode(self, frames: np.ndarray) -> np.ndarray:
        means = patch_means(frames, self.patch)
        n, h, w, _ = means.shape
        return _nearest(means.reshape(-1, 3).astype(np.float64), self.palette).reshape(n, h, w)

    def decode(self, codes: np.ndarray, *, smooth: bool = False) -> np.ndarray:
        """Nearest (block) upsampling, or bilinear with `smooth` (a stronger variant)."""
        colours = self.palette[codes]  # [N, h, w, 3]
        p = self.patch
        if not smooth:
            out = np.repeat(np.repeat(colours, p, axis=1), p, axis=2)
        else:
            import jax

            n, h, w, c = colours.shape
            out = np.asarray(jax.image.resize(colours, (n, h * p, w * p, c), "bilinear"))
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
