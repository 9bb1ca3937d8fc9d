"""Disk full during `lwm train`, for real, on a small tmpfs (issue 28, case 3): one line naming
the path and the free space, exit 74, no orbax temporary directory left, and the rerun (with
room) resumes from the last committed step with the losses of an uninterrupted run.

Mounting needs root (or a user namespace, which a test process cannot enter): skipped with the
reason otherwise. Sizes: the train state of the model below (42,080 params, Adam) holds ~500 KiB
of array data (a checkpoint takes 580-800 KiB, varying with tensorstore's batching), so 400 KiB
fills at the first checkpoint, and "used + 300 KiB" after one committed step.
"""

from __future__ import annotations

import errno
import json
import pathlib
import re
import shutil
import subprocess

import pytest
from compile_cache import persistent_compile_cache

from lwm.cli.main import main
from lwm.io import write_json
from lwm.training.metrics import MetricsWriter
from lwm.write_errors import EXIT_WRITE_FAILED, WriteFailed, write_errno, write_failed

TRAIN = [
    "--config.train.progress_bar=False",
    "--config.train.peak_flops=1e12",
    "--config.train.log_every=1",
    "--config.train.save_every=2",
    "--config.model.num_layers=1",
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
]
NOISE = ("Traceback", "Exception ignored", "ERROR:absl", "Event loop is closed")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    with persistent_compile_cache(str(tmp_path_factory.mktemp("xla_cache"))) as path:
        yield path


@pytest.fixture
def tmpfs(tmp_path):
    """`mount(size)` mounts a tmpfs of that size (or resizes it) and returns its path."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str) -> pathlib.Path:
        opts = f"remount,size={size}" if mounted else f"size={size}"
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(size)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _train(wd: pathlib.Path, max_steps: int) -> int:
    args = ["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN]
    return main([*args, "--max-steps", str(max_steps)])


def _error_line(err: str) -> str:
    """The run's only error line (the stage log line aside), with no traceback anywhere."""
    for noise in NOISE:
        assert noise not in err, err
    errors = [x for x in err.splitlines() if "error" in x]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def _losses(wd: pathlib.Path) -> dict[int, float]:
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps  # each step once
    return {r["step"]: r["loss"] for r in records}


def _leftovers(root: pathlib.Path) -> list[str]:
    return [str(p) for p in root.rglob("*orbax-checkpoint-tmp*")]


def test_disk_full_at_first_checkpoint(tmpfs, compile_cache, capsys):  # noqa: ARG001
    wd = tmpfs("400k") / "wd"
    capsys.readouterr()
    rc = _train(wd, 4)
    line = _error_line(capsys.readouterr().err)
    assert rc == EXIT_WRITE_FAILED, line
    assert line.startswith(
        f"lwm train: error: no space left on device writing checkpoint step 2 to {wd}/checkpoints ("
    ), line
    assert "free of 400.0 KiB); no step committed yet" in line, line
    assert not _leftovers(wd)
    failed_losses = _losses(wd)  # the run went on while the save failed in the background

    tmpfs("8m")  # room: the same command starts over (nothing was committed)
    assert _train(wd, 4) == 0
    assert not _leftovers(wd)
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4"]
    losses = _losses(wd)
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(losses[s] == failed_losses[s] for s in failed_losses)


def test_disk_full_after_a_committed_step_resumes_from_it(tmpfs, compile_cache, capsys):  # noqa: ARG001
    wd = tmpfs("8m") / "wd"
    assert _train(wd, 2) == 0  # step 2 committed
    # Shrink the disk to what is used plus less than a checkpoint's data (~500 KiB).
    used_k = shutil.disk_usage(wd).used // 1024
    tmpfs(f"{used_k + 300}k")
    capsys.readouterr()
    rc = _train(wd, 6)
    line = _error_line(capsys.readouterr().err)
    assert rc == EXIT_WRITE_FAILED, line
    assert f"no space left on device writing checkpoint step 4 to {wd}/checkpoints (" in line
    assert "); last committed step 2 is intact: rerun the same command once there is room" in line
    assert not _leftovers(wd)
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2"]
    failed = _losses(wd)  # steps 3-6 were trained from step 2 before the save's failure surfaced

    tmpfs("8m")
    assert _train(wd, 6) == 0
    err = capsys.readouterr().err
    assert "steps 2/20" in err, err  # resumed from the committed step
    losses = _losses(wd)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses == {s: failed[s] for s in (1, 2, 3, 4, 5, 6)}
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_disk_full_in_the_run_files(tmpfs, compile_cache, capsys):  # noqa: ARG001
    """A one-page disk: which run file fills it first depends on what the run writes before
    its first step (lock, config.json, metrics.jsonl); each is one line naming it."""
    wd = tmpfs("4k") / "wd"
    capsys.readouterr()
    rc = _train(wd, 2)
    line = _error_line(capsys.readouterr().err)
    assert rc == EXIT_WRITE_FAILED, line
    pattern = rf"lwm train: error: no space left on device writing {re.escape(str(wd))}/"
    assert re.match(pattern + r"(config\.json|metrics\.jsonl) \(0 B free of 4\.0 KiB\)", line)
    assert not [p for p in wd.rglob("*") if p.name.endswith(".tmp")]  # atomic writes cleaned


def test_metrics_and_atomic_writes_on_a_full_disk(tmpfs):
    mnt = tmpfs("8k")
    (mnt / "ballast").write_bytes(b"x" * 8192)  # the disk is full
    with pytest.raises(WriteFailed) as e:
        MetricsWriter(mnt / "metrics.jsonl").write({"step": 1, "loss": 2.0})
    assert str(e.value) == (
        f"no space left on device writing {mnt}/metrics.jsonl (0 B free of 8.0 KiB); rerun the "
        "same command once there is room: it resumes from the last checkpoint"
    )
    with pytest.raises(WriteFailed) as e:
        write_json(mnt / "config.json", {"a": "x" * 100})
    want = f"no space left on device writing {mnt}/config.json (0 B free of 8.0 KiB)"
    assert str(e.value) == want
    assert sorted(p.name for p in mnt.iterdir()) == ["ballast", "metrics.jsonl"]  # no temp file


def test_write_errors_are_recognised_in_any_chain(tmp_path):
    """tensorstore's message inside orbax's wrapper, a plain OSError, and what is not one."""
    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "/x/": '
        "Failed to write 106380 bytes to file 4: No space left on device [os_error_code='28']"
    )
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = ts
    assert write_errno(wrapped) == errno.ENOSPC
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "f"))
    err = write_failed(denied, None)
    assert isinstance(err, WriteFailed) and err.exit_code == EXIT_WRITE_FAILED
    assert str(err) == f"permission denied writing {tmp_path / 'f'}"  # no free space: not the cause
    assert write_failed(FileNotFoundError(errno.ENOENT, "No such file"), tmp_path) is None
    assert write_errno(ValueError("RESOURCE_EXHAUSTED: out of memory")) is None


def test_train_help_documents_the_write_failure_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"{EXIT_WRITE_FAILED} a write failed (disk full" in out
    assert "resumes from the last committed checkpoint" in out
