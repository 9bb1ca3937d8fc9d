"""Acceptance: exact resume after SIGKILL, SIGTERM -> checkpoint + exit 0, 3-stage run with a
restart inside stage 2, refusing an incompatible workdir, 2 processes vs 1."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from lwm.checkpoint import Checkpointer
from lwm.config import load_config
from lwm.errors import LwmError
from lwm.training.metrics import read_metrics
from lwm.training.trainer import train

REPO = pathlib.Path(__file__).resolve().parent.parent
FAST = ["train.progress_bar=False", "train.peak_flops=1e12", "train.async_save=True"]


def _cfg(*overrides):
    return load_config("train_debug", [*FAST, *overrides])


def _lwm(args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "lwm.cli.main", *args]
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")}


def _wait_for_step(workdir, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if max(_losses(workdir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = tmp_path_factory.mktemp("full")
    train(_cfg("train.steps=12", "train.save_every=4"), wd, log=lambda m: None)
    return _losses(wd)


def _args(wd, *overrides):
    args = ["train", "--config", "train_debug", "--workdir", str(wd)]
    for o in (*FAST, *overrides):
        args.append(f"--config.{o}")
    return args


def test_exact_resume_after_sigkill(tmp_path, uninterrupted):
    assert sorted(uninterrupted) == list(range(1, 13))
    wd = tmp_path / "run"
    proc = _lwm(_args(wd, "train.steps=12", "train.save_every=4"))
    _wait_for_step(wd, 6, proc)
    t0 = time.time()  # kill once the (async) step-4 checkpoint is finalized, before step 8
    while not (wd / "checkpoints" / "4").is_dir() and time.time() - t0 < 60:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Checkpointer(wd / "checkpoints") as ckpt:
        last_ckpt = ckpt.latest_step()
    logged = max(_losses(wd))
    assert last_ckpt is not None and last_ckpt < 12 and last_ckpt % 4 == 0
    train(_cfg("train.steps=12", "train.save_every=4"), wd, log=lambda m: None)
    resumed = _losses(wd)
    assert sorted(resumed) == list(range(1, 13))
    # Every step after the checkpoint was recomputed by the new process: bit-identical losses.
    for step in range(last_ckpt + 1, 13):
        assert resumed[step] == uninterrupted[step], (step, logged)


def test_sigterm_saves_current_step_and_exits_0(tmp_path):
    wd = tmp_path / "run"
    proc = _lwm(_args(wd, "train.steps=200", "train.save_every=1000"))
    _wait_for_step(wd, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    last_logged = max(_losses(wd))
    with Checkpointer(wd / "checkpoints") as ckpt:
        assert ckpt.latest_step() == last_logged
        assert ckpt.metadata()["stage_step"] == last_logged
    assert "SIGTERM: saved step" in err


def test_three_stages_with_restart_in_stage_2(tmp_path):
    wd = tmp_path / "stages"
    cfg = load_config("train_stages_debug", FAST)
    logs = []
    res = train(cfg, wd, max_steps=8, log=logs.append)  # stages end at steps 6, 12, 18
    assert res.preempted and res.stage == 1
    with Checkpointer(wd / "checkpoints") as ckpt:
        meta = ckpt.metadata()
    assert (meta["step"], meta["stage"], meta["stage_step"]) == (8, 1, 2)
    assert meta["model_config"]["rope_theta"] == 1e7
    logs.clear()
    res = train(load_config("train_stages_debug", FAST), wd, log=logs.append)
    assert "stage 2/3" in logs[0] and "steps 2/6" in logs[0]  # resumed inside stage 2
    assert not res.preempted and res.step == 18
    records = read_metrics(wd / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 19))
    assert [r["stage"] for r in records] == [0] * 6 + [1] * 6 + [2] * 6
    assert [r["seq_len"] for r in records[::6]] == [256, 512, 1024]
    assert (wd / "loss_curve.png").stat().st_size > 1000
    with Checkpointer(wd / "checkpoints") as ckpt:
        meta = ckpt.metadata()
    assert meta["stage"] == 2 and meta["mesh"]["sp"] == 4
    assert meta["model_config"]["rope_theta"] == 2.5e7


def test_workdir_never_overwritten(tmp_path):
    wd = tmp_path / "run"
    train(_cfg("train.steps=2", "train.save_every=2"), wd, log=lambda m: None)
    with pytest.raises(LwmError, match="different model"):
        train(_cfg("model.hidden_size=32", "train.steps=2"), wd, log=lambda m: None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    proc = _lwm(_args(other, "train.steps=2"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "holds no lwm checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert (other / "precious.txt").read_text() == "x"


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path, uninterrupted):
    wd = tmp_path / "mp"
    env = dict(os.environ, LWM_BIN=f"{sys.executable} -m lwm.cli.main")
    env.pop("XLA_FLAGS", None)
    cmd = [
        str(REPO / "scripts" / "launch_local.sh"),
        "2",
        "--",
        *_args(wd, "train.steps=12", "train.save_every=4", "mesh.fsdp=2"),
        "--max-steps",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(wd)
    assert sorted(losses) == [1, 2]
    for step in (1, 2):
        assert abs(losses[step] - uninterrupted[step]) <= 1e-5
    assert json.loads((wd / "config.json").read_text())["mesh"]["fsdp"] == 2
