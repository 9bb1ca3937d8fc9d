"""Acceptance, against one uninterrupted 3-stage run (256 -> 512 -> 1024 tokens, theta rising,
the last stage on its own mesh): SIGKILL inside stage 2 then a restart resumes in stage 2 with
bit-identical losses; SIGTERM leaves a checkpoint of the current step and exit status 75
(resumable); stage ends survive `keep`; 2 processes match 1; a workdir is never overwritten.

Every run shares one persistent compilation cache, so each stage's step is compiled once for the
whole module (subprocesses included).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from compile_cache import persistent_compile_cache

from lwm.checkpoint import Checkpointer
from lwm.cli.main import main
from lwm.config import load_config
from lwm.errors import LwmError
from lwm.training.metrics import read_metrics
from lwm.training.trainer import train

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = "train_stages_debug"  # stages end at global steps 6, 12, 18
FAST = ["train.progress_bar=False", "train.peak_flops=1e12", "train.keep=1"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module's runs (this process and subprocesses)."""
    with persistent_compile_cache(str(tmp_path_factory.mktemp("xla_cache"))) as path:
        yield path


def _env(cache):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )


def _args(wd, *overrides):
    return ["train", "--config", CONFIG, "--workdir", str(wd)] + [
        f"--config.{o}" for o in (*FAST, *overrides)
    ]


def _lwm(args, cache, log_path):
    """`lwm ...` in a subprocess, stderr to a file (read while it runs, no pipe to fill up)."""
    cmd = [sys.executable, "-m", "lwm.cli.main", *args]
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller through proc.log
    proc = subprocess.Popen(
        cmd, env=_env(cache), cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True
    )
    proc.log = log
    return proc


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl")}


def _wait_until(cond, proc, log_path, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended early: {pathlib.Path(log_path).read_text()[-3000:]}"
            )
        time.sleep(0.02)
    raise AssertionError("timed out")


def _checkpoints(wd):
    with Checkpointer(wd / "checkpoints") as ckpt:
        return ckpt.all_steps(), (ckpt.metadata() if ckpt.latest_step() is not None else None)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, compile_cache):
    """The uninterrupted 3-stage run, in this process."""
    wd = tmp_path_factory.mktemp("oracle")
    logs = []
    res = train(load_config(CONFIG, FAST), wd, log=logs.append)
    return wd, res, logs


def test_three_stages_in_one_command(oracle):
    wd, res, logs = oracle
    assert not res.preempted and (res.step, res.stage) == (18, 2)
    records = read_metrics(wd / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 19))
    assert [r["stage"] for r in records] == [0] * 6 + [1] * 6 + [2] * 6
    assert [r["seq_len"] for r in records[::6]] == [256, 512, 1024]
    assert all(r["loss"] > 0 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]  # it learns
    assert sum("stage 3/3 seq_len 1024" in m for m in logs) == 1
    assert (wd / "loss_curve.png").stat().st_size > 1000
    # keep=1, yet the ends of stages 1 and 2 (later stages start from them) are still there.
    steps, meta = _checkpoints(wd)
    assert steps == [6, 12, 18]
    assert meta["stage"] == 2 and meta["mesh"]["sp"] == 4
    assert meta["model_config"]["rope_theta"] == 2.5e7


def test_sigkill_resume_in_stage_2_then_sigterm(tmp_path, oracle, compile_cache):
    """Run A is killed (SIGKILL) in stage 2 between checkpoints; run B resumes inside stage 2 and
    gets SIGTERM in stage 3; run C finishes. Every step's loss equals the oracle's bit for bit."""
    uninterrupted = _losses(oracle[0])
    wd = tmp_path / "run"
    args = _args(wd, "train.save_every=4")  # checkpoints at 4, 6 (stage end), 8, 12, 16, 18

    log_a = tmp_path / "a.log"
    proc = _lwm(args, compile_cache, log_a)
    _wait_until(lambda: (wd / "checkpoints" / "8").is_dir(), proc, log_a)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.log.close()
    steps, meta = _checkpoints(wd)
    assert steps[-1] == 8, f"killed too late: {steps} (logged {max(_losses(wd))})"
    assert (meta["stage"], meta["stage_step"]) == (1, 2)
    assert meta["model_config"]["rope_theta"] == 1e7

    log_b = tmp_path / "b.log"
    proc = _lwm(args, compile_cache, log_b)
    _wait_until(lambda: max(_losses(wd), default=0) >= 14, proc, log_b)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    proc.log.close()
    err = log_b.read_text()
    assert proc.returncode == 75, err[-3000:]  # interrupted, resumable
    assert "stage 2/3 seq_len 512" in err and "steps 2/6" in err  # resumed inside stage 2
    last_logged = max(_losses(wd))
    assert "SIGTERM: saved step" in err
    steps, meta = _checkpoints(wd)
    assert steps[-1] == last_logged and 14 <= last_logged < 18
    assert (meta["stage"], meta["stage_step"]) == (2, last_logged - 12)

    logs = []
    res = train(load_config(CONFIG, [*FAST, "train.save_every=4"]), wd, log=logs.append)
    assert not res.preempted and res.step == 18
    assert f"steps {last_logged - 12}/6" in logs[0]
    resumed = _losses(wd)
    assert sorted(resumed) == list(range(1, 19))
    for step in range(1, 19):
        assert resumed[step] == uninterrupted[step], step


def test_workdir_never_overwritten(tmp_path, oracle, capsys):
    wd = oracle[0]
    cfg = load_config(CONFIG, [*FAST, "model.hidden_size=32"])
    with pytest.raises(LwmError, match="different model"):
        train(cfg, wd, log=lambda m: None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    assert main(_args(other)) == 2
    err = capsys.readouterr().err
    assert "holds no lwm checkpoint" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]
    assert (other / "precious.txt").read_text() == "x"
    # A finished run is not redone.
    logs = []
    res = train(load_config(CONFIG, FAST), wd, log=logs.append)
    assert res.step == 18 and "already done" in logs[0]


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path, oracle, compile_cache):
    """2 processes x 1 device (mesh fsdp=2) vs the oracle's 8-device mesh (fsdp=2, tp=2, sp=2)."""
    uninterrupted = _losses(oracle[0])
    wd = tmp_path / "mp"
    env = dict(_env(compile_cache), LWM_BIN=f"{sys.executable} -m lwm.cli.main")
    env.pop("XLA_FLAGS", None)
    cmd = [
        str(REPO / "scripts" / "launch_local.sh"),
        "2",
        "--",
        *_args(wd, "mesh.tp=1", "mesh.sp=1", "stages.2.mesh.tp=1", "stages.2.mesh.sp=1"),
        "--max-steps",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(wd)
    assert sorted(losses) == [1, 2]
    for step in (1, 2):
        assert abs(losses[step] - uninterrupted[step]) <= 1e-5
    assert json.loads((wd / "config.json").read_text())["mesh"]["fsdp"] == -1
    with Checkpointer(wd / "checkpoints") as ckpt:
        assert ckpt.metadata()["mesh"] == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 1}
