"""The workdir lock (issue 28, case 2): one lwm process per run directory. A real `lwm train`
process holds it; a second command on the same directory refuses in one line naming the holder's
host and pid and touches nothing; kill -9 of the holder frees it with no manual unlock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from bad_input_fixtures import REPO, TRAIN_FAST, digest, one_line_error, text_assets

from lwm.cli.main import main
from lwm.workdir_lock import EXIT_BUSY, LOCK_FILE, WorkdirBusy, workdir_lock

__all__ = ["text_assets"]  # a fixture in use

HOLD = (
    "import sys, time\n"
    "from lwm.workdir_lock import workdir_lock\n"
    "with workdir_lock(sys.argv[1], 'lwm test-holder'):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


def _holder(directory):
    """Another process holding `directory`'s lock (killed by the caller)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _wait_for(pred, proc, timeout=240.0):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f"holder exited {proc.returncode}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


def test_real_train_holds_lock_refuses_second_and_kill_9_frees_it(tmp_path, capsys):
    wd = tmp_path / "wd"
    log = open(tmp_path / "holder.log", "w")
    # A run far longer than the test: it is stopped (SIGSTOP) once it has logged a step, so the
    # workdir holds still while the second command is refused, then killed with SIGKILL.
    holder = subprocess.Popen(
        [sys.executable, "-m", "lwm.cli.main", "train", "--config", "train_debug"]
        + ["--workdir", str(wd), *TRAIN_FAST, "--config.train.steps=100000"],
        stdout=log,
        stderr=log,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        _wait_for(
            lambda: (wd / "metrics.jsonl").is_file() and (wd / "metrics.jsonl").stat().st_size,
            holder,
        )
        os.kill(holder.pid, signal.SIGSTOP)
        held = json.loads((wd / LOCK_FILE).read_text())
        assert held["pid"] == holder.pid and held["command"] == "lwm train"
        before = digest(wd)
        capsys.readouterr()
        rc = main(["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST])
        line = one_line_error(
            capsys, EXIT_BUSY, rc, str(wd), f"pid {holder.pid} on host {socket.gethostname()}"
        )
        assert "in use by lwm train" in line
        assert digest(wd) == before  # the refused command touched nothing
    finally:
        holder.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        holder.wait()
        log.close()
    assert (wd / LOCK_FILE).exists()  # left by the killed holder: stale, not a lock
    with workdir_lock(wd, "lwm train") as root:  # no manual unlock needed
        assert json.loads((root / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (wd / LOCK_FILE).exists()  # a clean release removes the file


def _vqgan(wd):
    return ["vqgan", "train", "--config", "vqgan_small", "--workdir", str(wd), "--data", "x.mp4"]


def _perplexity(wd, assets):
    model = ["--checkpoint", str(assets["fits"]), "--tokenizer", str(assets["tok"])]
    args = ["--text", str(assets["text"]), "--lengths", "16", "--segment", "4"]
    return ["perplexity", *model, *args, "--out", str(wd)]


def _needle(wd, assets):
    model = ["--checkpoint", str(assets["fits"]), "--tokenizer", str(assets["tok"])]
    return ["needle", *model, "--lengths", "64", "--depths", "0.5", "--out", str(wd)]


# Each command is also given an input it would refuse right after the lock (a missing
# --init-from, missing data, another demo's record): where the lock is missing the test fails
# fast with exit 2 instead of running the whole command.
COMMANDS = {
    "train": lambda wd, _: [
        *["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST],
        *["--init-from", str(wd.parent / "empty")],
    ],
    "vqgan train": lambda wd, _: _vqgan(wd),
    "demo": lambda wd, _: ["demo", "--workdir", str(wd)],
    "demo --video": lambda wd, _: ["demo", "--video", "--workdir", str(wd)],
    "perplexity": _perplexity,
    "needle": _needle,
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_resumable_command_refuses_a_held_directory(tmp_path, capsys, command, request):
    assets = request.getfixturevalue("text_assets") if command in ("perplexity", "needle") else None
    wd = tmp_path / "wd"
    (tmp_path / "empty").mkdir()
    holder = _holder(wd)
    try:
        if command.startswith("demo"):
            (wd / "demo.json").write_text(json.dumps({"demo": "other", "seed": 5}))
        before = digest(wd)
        capsys.readouterr()
        rc = main(COMMANDS[command](wd, assets))
        one_line_error(capsys, EXIT_BUSY, rc, "in use by lwm test-holder", f"pid {holder.pid}")
        assert digest(wd) == before
    finally:
        holder.kill()
        holder.wait()


def test_same_process_shares_its_lock_and_a_new_dir_goes_when_empty(tmp_path):
    wd = tmp_path / "a" / "b"
    with workdir_lock(wd, "lwm demo") as root:
        with workdir_lock(root, "lwm train"):  # the demo's own trainer: no self-refusal
            pass
        assert (root / LOCK_FILE).exists()  # still held by the outer one
        holder = subprocess.run(
            [sys.executable, "-c", HOLD, str(root)], capture_output=True, text=True, cwd=REPO
        )
        assert holder.returncode == 1 and "in use by lwm demo" in holder.stderr
    assert not (tmp_path / "a").exists()  # created by the lock, left empty: removed
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(Exception, match="is not a directory"):
        with workdir_lock(f, "lwm train"):
            pass


def test_filesystem_without_locks_warns_once_and_goes_on(tmp_path, monkeypatch, capsys):
    """NFS without lockd, some FUSE mounts: flock fails with ENOLCK (simulated: no such
    filesystem here); the command says so in one line and runs unlocked."""

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with workdir_lock(tmp_path / "wd", "lwm train", warn=print) as root:
        assert root.is_dir()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("warning: cannot lock") and "unlocked" in out[0]


def test_busy_is_an_lwm_error_with_its_exit_code():
    assert issubclass(WorkdirBusy, Exception) and WorkdirBusy.exit_code == EXIT_BUSY != 2
