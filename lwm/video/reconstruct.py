"""Round-trip a video through a VQGAN to mp4 (visual checks), streaming batch by batch."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from lwm.video.reader import probe, read_frames
from lwm.video.writer import write_video


def reconstruct_video(
    vqgan,
    path: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    batch_size: int = 16,
    side_by_side: bool = False,
    out_fps: float | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Writes the reconstruction (optionally original | reconstruction side by side) to `out`;
    returns {"frames": n, "psnr": mean dB over frames}."""
    import jax.numpy as jnp

    from lwm.video.vqgan import make_decode_fn, make_encode_fn
    from lwm.video.vqgan_losses import psnr

    res = vqgan.cfg.resolution
    encode, decode = make_encode_fn(vqgan), make_decode_fn(vqgan)
    stream = read_frames(path, frames=frames, fps=fps, start=start, end=end, size=res)
    scores: list[float] = []

    def batches() -> Iterator[np.ndarray]:
        buf = np.zeros((batch_size, res, res, 3), np.uint8)
        n = 0
        for _, frame in stream:
            buf[n] = frame
            n += 1
            if n == batch_size:
                yield buf.copy(), n
                n = 0
        if n:
            yield buf.copy(), n

    def frames_out() -> Iterator[np.ndarray]:
        for batch, n in batches():
            recon = np.asarray(decode(encode(batch)))
            scores.extend(np.asarray(psnr(jnp.asarray(batch[:n]), jnp.asarray(recon[:n]))))
            for i in range(n):
                yield np.concatenate([batch[i], recon[i]], axis=1) if side_by_side else recon[i]

    if out_fps is None:
        out_fps = fps or (4.0 if frames else probe(path).fps) or 4.0
    n = write_video(out, frames_out(), fps=out_fps, overwrite=overwrite)
    return {"frames": n, "psnr": float(np.mean(scores))}
