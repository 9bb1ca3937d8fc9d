"""A 2-process job (gloo over loopback) whose process 1 is SIGKILLed mid-training: process 0
exits non-zero with one line within 60 s (no hang), and a rerun of both processes resumes from the
last checkpoint with losses identical to an uninterrupted 2-process run. A stopped (SIGSTOP)
process, which leaves no broken socket behind, is caught by the heartbeat watchdog (same test,
to share the compiles)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 8
FAST = [
    "--config.train.progress_bar=False",
    "--config.train.peak_flops=1e12",
    "--config.train.log_every=1",
    "--config.train.save_every=2",
    f"--config.train.steps={STEPS}",
    # A smaller model than train_debug's: the compiles are most of this test's time.
    "--config.model.num_layers=1",
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
    "--config.train.seq_len=64",
    "--config.train.batch_tokens=256",
]

pytestmark = pytest.mark.multiprocess


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


def _start(wd, logs, cache, **env_extra):
    """Both processes of one `lwm train` job; returns their Popen objects."""
    port = _port()
    procs = []
    for i in (0, 1):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            LWM_COORDINATOR=f"127.0.0.1:{port}",
            LWM_NUM_PROCESSES="2",
            LWM_PROCESS_ID=str(i),
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
            **env_extra,
        )
        log = open(logs / f"p{i}.log", "w")  # noqa: SIM115 - closed in _finish
        cmd = [sys.executable, "-m", "lwm.cli.main", "train", "--config", "train_debug"]
        proc = subprocess.Popen(
            [*cmd, "--workdir", str(wd), *FAST], cwd=REPO, env=env, stdout=log, stderr=log
        )
        proc.log = log
        procs.append(proc)
    return procs


def _finish(procs, timeout=300):
    rcs = [p.wait(timeout=timeout) for p in procs]
    for p in procs:
        p.log.close()
    return rcs


def _losses(wd) -> dict[int, float]:
    path = pathlib.Path(wd) / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [x for x in path.read_text().splitlines() if x.endswith("}")]
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _wait_for_step(wd, step, procs, timeout=240, checkpoint=None):
    """Until metrics reach `step` (and, if given, checkpoint `checkpoint` is finalized: orbax
    renames a step's folder to its number only when the save has committed)."""
    t0 = time.time()
    ckpt = None if checkpoint is None else pathlib.Path(wd) / "checkpoints" / str(checkpoint)
    while max(_losses(wd), default=0) < step or (ckpt is not None and not ckpt.is_dir()):
        assert all(p.poll() is None for p in procs), "a process ended early"
        assert time.time() - t0 < timeout, "no progress"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("oracle")
    procs = _start(root / "wd", root, cache)
    assert _finish(procs) == [0, 0], (root / "p0.log").read_text()[-3000:]
    losses = _losses(root / "wd")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _exit_line(log_path) -> tuple[str, str]:
    log = pathlib.Path(log_path).read_text()
    return log, [x for x in log.strip().splitlines() if x.strip()][-1]


def test_dead_or_stopped_process_then_resume_matches(tmp_path, cache, uninterrupted):
    """SIGKILL process 1 (its socket resets: the collective in flight fails), rerun both; SIGSTOP
    process 1 of the rerun (sockets stay open: the watchdog catches it), rerun both to the end."""
    wd = tmp_path / "wd"
    # Usually the collective in flight fails at once; if process 0 is elsewhere (e.g. in a
    # checkpoint's barrier on a loaded machine), the watchdog ends it: either is one line, exit 3.
    procs = _start(wd, tmp_path, cache, LWM_PEER_TIMEOUT_S="15")
    _wait_for_step(wd, 5, procs, checkpoint=4)  # checkpoints at 2 and 4 exist
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    rc0 = procs[0].wait(timeout=60)  # no hang: within 60 s
    elapsed = time.time() - t0
    _finish(procs)
    log, last = _exit_line(tmp_path / "p0.log")
    assert rc0 == 3 and elapsed < 60, log[-3000:]
    assert last.startswith(
        ("lwm train: error: another process of this job failed (", "lwm: error: process 1 of 2")
    ), last
    assert last.endswith("rerun every process to resume from the last checkpoint")
    assert "Traceback" not in log and "Check failure stack trace" not in log
    assert 4 in [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]

    procs = _start(wd, tmp_path, cache, LWM_PEER_TIMEOUT_S="8")  # resumes from step 4
    _wait_for_step(wd, 7, procs)  # a checkpoint at 6
    procs[1].send_signal(signal.SIGSTOP)
    t0 = time.time()
    try:
        rc0 = procs[0].wait(timeout=60)
    finally:
        procs[1].send_signal(signal.SIGKILL)
        procs[1].send_signal(signal.SIGCONT)
    elapsed = time.time() - t0
    _finish(procs)
    log, last = _exit_line(tmp_path / "p0.log")
    assert rc0 == 3 and elapsed < 40, log[-3000:]  # well before jax's 100 s heartbeat abort
    assert last.startswith("lwm: error: process 1 of 2 stopped responding (")
    assert "Traceback" not in log and "Check failure stack trace" not in log

    procs = _start(wd, tmp_path, cache)  # rerun both: resume to the end
    assert _finish(procs) == [0, 0], (tmp_path / "p0.log").read_text()[-3000:]
    resumed = _losses(wd)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == uninterrupted[step], step  # bit for bit


def test_peer_failure_is_recognised_through_orbax_barrier_errors():
    """orbax's save barrier re-raises a failed gloo all-gather as a ValueError; other errors are
    not a lost peer (they keep their traceback)."""
    from lwm.training.peer_watchdog import is_peer_failure

    gloo = "UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error: Connection reset by peer"
    assert is_peer_failure(ValueError(gloo))
    try:
        try:
            raise ValueError(gloo)
        except ValueError as inner:
            raise RuntimeError("checkpoint save failed") from inner
    except RuntimeError as outer:
        assert is_peer_failure(outer)
    assert not is_peer_failure(ValueError("batch size 3 not divisible by 2"))
    assert not is_peer_failure(RuntimeError("UNAVAILABLE"))  # weak sign, not a runtime error
