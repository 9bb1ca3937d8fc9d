"""The bad-input battery: each case gets one line naming the problem, a non-zero exit (or the
documented fallback), and nothing written or changed (checksums of the files involved before and
after). Tiny models; the CLI runs in-process except where signals need a process of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model

from lwm.cli.main import main
from lwm.models.config import ModelConfig
from lwm.models.io import save_model
from lwm.models.transformer import Transformer

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN_FAST = [
    "--config.train.progress_bar=False",
    "--config.train.peak_flops=1e12",
    "--config.train.log_every=1",
]


def digest(path: pathlib.Path) -> str:
    """A checksum of a file or a whole tree (relative names, modes, contents): equal digests
    mean nothing was written, removed or changed."""
    path = pathlib.Path(path)
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for p in files:
        rel = p.relative_to(path) if p != path else pathlib.Path(p.name)
        h.update(f"{rel}:{p.stat().st_mode:o}\n".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(capsys, code: int, rc: int, *needles: str) -> str:
    """Asserts exit `code` and a single stderr line holding every needle; returns the line."""
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# -- damaged checkpoints ---------------------------------------------------------------------

TINY = ModelConfig(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_sequence_length=64,
)


@pytest.fixture(scope="module")
def two_step_models(tmp_path_factory):
    """A model checkpoint with steps 3 and 6 (different weights) and the greedy ids each gives."""
    root = tmp_path_factory.mktemp("ckpts")
    good = root / "good"
    m3 = random_model(lambda: Transformer(TINY, rngs=nnx.Rngs(0)), seed=3)
    m6 = random_model(lambda: Transformer(TINY, rngs=nnx.Rngs(0)), seed=6)
    save_model(good, m3, step=3)
    save_model(good, m6, step=6)
    only3 = root / "only3"
    save_model(only3, m3, step=3)
    return good, only3


def _generate(ckpt, *extra) -> list[str]:
    args = ["generate", "--checkpoint", str(ckpt), "--prompt-ids", "1,2,3"]
    return [*args, "--max-new-tokens", "4", *extra]


def _damage(step_dir: pathlib.Path, how: str) -> None:
    if how == "truncated data file":
        for f in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
    elif how == "metadata":
        shutil.rmtree(step_dir / "metadata")
    elif how == "state":
        shutil.rmtree(step_dir / "state")
    elif how == "state/_METADATA":
        (step_dir / "state" / "_METADATA").unlink()


DAMAGE = {
    "truncated data file": "OUT_OF_RANGE",
    "metadata": "metadata missing",
    "state": "state/ missing",
    "state/_METADATA": "state/_METADATA missing",
}


@pytest.fixture(scope="module")
def step3_answer(two_step_models):
    _, only3 = two_step_models
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_generate(only3)) == 0
    return out.getvalue()


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_newest_step_falls_back(tmp_path, two_step_models, step3_answer, capsys, how):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    _damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    rc = main(_generate(ckpt))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("checkpoint step 6 unreadable (") and DAMAGE[how] in lines[0]
    assert lines[0].endswith("; using step 3")
    assert captured.out == step3_answer  # step 3's weights answered
    assert digest(ckpt) == before  # nothing deleted or written


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_newest_step_strict_is_an_error(tmp_path, two_step_models, capsys, how):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    _damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    rc = main(_generate(ckpt, "--strict"))
    line = one_line_error(capsys, 2, rc, "checkpoint step 6", "unreadable", DAMAGE[how], "strict")
    assert "newest readable: step 3" in line
    assert capsys.readouterr().out == ""
    assert digest(ckpt) == before


def test_empty_folder_as_checkpoint(tmp_path):
    """Subprocess: the old failure was a traceback at interpreter shutdown, after the message."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "lwm.cli.main", *_perplexity_args(empty, tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"lwm perplexity: error: no checkpoint in {empty}"]
    assert list(empty.iterdir()) == [] and not (tmp_path / "out").exists()


def _perplexity_args(ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    return ["perplexity", "--checkpoint", str(ckpt), "--text", str(text), "--lengths", "8"] + [
        "--segment",
        "4",
        "--out",
        str(tmp_path / "out"),
    ]


# -- training: resume fallback, signals, bad flags ---------------------------------------------


def _train_args(wd, *extra):
    return ["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_debug run to step 4 with checkpoints at 2 and 4 (in-process)."""
    wd = tmp_path_factory.mktemp("train") / "wd"
    assert main(_train_args(wd, "--max-steps", "4", "--config.train.save_every=2")) == 0
    return wd


def test_train_resume_falls_back_past_truncated_step(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    _damage(wd / "checkpoints" / "4", "truncated data file")
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
    _damage(wd / "checkpoints" / "4", "truncated data file")
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
    one_line_error(capsys, 2, rc, "seq_len 64", "seq_len 128", "step 4")
    assert digest(wd) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_resumable(tmp_path, trained, sig):
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
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
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


_ = np  # numpy is used by later sections
