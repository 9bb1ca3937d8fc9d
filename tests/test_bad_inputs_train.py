"""Bad-input battery, `lwm train`: resume fallback past a damaged step, signals, bad flags."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from bad_input_fixtures import (
    REPO,
    TRAIN_FAST,
    damage,
    digest,
    one_line_error,
)
from compile_cache import persistent_compile_cache

from lwm.cli.main import main


def _train_args(wd, *extra):
    return ["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, compile_cache):
    """train_debug run to step 4 with checkpoints at 2 and 4 (in-process)."""
    wd = tmp_path_factory.mktemp("train") / "wd"
    assert main(_train_args(wd, "--max-steps", "4", "--config.train.save_every=2")) == 0
    return wd


def test_train_resume_falls_back_past_truncated_step(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    damage(wd / "checkpoints" / "4", "truncated data file")
    damaged = digest(wd / "checkpoints" / "4")
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "5", "--config.train.save_every=2"))
    err = capsys.readouterr().err
    assert rc == 0, err
    notes = [x for x in err.splitlines() if "unreadable" in x]
    assert notes[0].startswith("checkpoint step 4 unreadable (OUT_OF_RANGE")
    assert notes[0].endswith("; using step 2")
    assert "moved it to 4.unreadable" in notes[1]
    # The damaged files are kept, renamed; training redid steps 3-4 and went on to 5.
    assert digest(wd / "checkpoints" / "4.unreadable") == damaged
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-2:] == [4, 5]
    losses = {r["step"]: r["loss"] for r in map(json.loads, open(wd / "metrics.jsonl"))}
    ref = {r["step"]: r["loss"] for r in map(json.loads, open(trained / "metrics.jsonl"))}
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert losses[3] == ref[3] and losses[4] == ref[4]  # redone exactly


def test_train_resume_strict_refuses_truncated_step(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    damage(wd / "checkpoints" / "4", "truncated data file")
    before = digest(wd)
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "5", "--strict"))
    one_line_error(capsys, 2, rc, "checkpoint step 4", "unreadable", "newest readable: step 2")
    assert digest(wd) == before


def test_max_steps_negative_refused(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, "--max-steps", "-1"))
    one_line_error(capsys, 2, rc, "--max-steps must be >= 1, got -1")
    assert not wd.exists()


def test_resume_with_other_seq_len_refused(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    before = digest(wd)
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "6", "--config.train.seq_len=64"))
    one_line_error(capsys, 2, rc, "seq_len 64", "seq_len 128", "step 4")  # was 128
    assert digest(wd) == before


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache shared by this module's training runs, in this process and
    in the signal tests' subprocesses (each train step is compiled once)."""
    with persistent_compile_cache(str(tmp_path_factory.mktemp("xla_cache"))) as path:
        yield path


@pytest.fixture(scope="module")
def subprocess_env(compile_cache):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_resumable(tmp_path, trained, subprocess_env, sig):
    """SIGTERM and Ctrl-C both save the current step and exit 75 ("interrupted, resumable")."""
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)  # resumes at step 5: no periodic save before 20
    log_path = tmp_path / "err.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lwm.cli.main",
                *_train_args(wd, "--config.train.save_every=100"),
            ],
            cwd=REPO,
            env=subprocess_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        t0 = time.time()
        while _last_logged(wd) < 6:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.time() - t0 < 240, "no progress"
            time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    err = log_path.read_text()
    assert rc == 75, err[-2000:]
    name = signal.Signals(sig).name
    last = [x for x in err.strip().splitlines() if x.strip()][-1]
    assert last.startswith(f"lwm train: interrupted by {name} at step ")
    assert "checkpoint saved, resumable (exit 75" in last
    stopped = int(last.split(" at step ")[1].split(":")[0])
    assert 6 <= stopped < 20 and _last_logged(wd) == stopped
    assert (wd / "checkpoints" / str(stopped)).is_dir()


def _last_logged(wd) -> int:
    path = wd / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")]
    return max(steps, default=0)


def test_train_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "75 interrupted by SIGTERM or SIGINT" in out and "resumable" in out


def test_non_literal_override_of_none_field(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, "--config.model.attention.causal_block_size=abc"))
    one_line_error(
        capsys,
        2,
        rc,
        "--config.model.attention.causal_block_size: expected int | None, got 'abc'",
    )
    assert not wd.exists()


def test_data_path_with_synthetic_source_refused(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, f"--config.data.path={tmp_path}"))
    one_line_error(capsys, 2, rc, "data.source is 'synthetic'", "--config.data.source=dataset")
    assert not wd.exists()
