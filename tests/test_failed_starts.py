"""Failed starts leave nothing (issue 28, cases 4, 6 and 8): a run refused before its first step
removes what it created and never what was there; a workdir that is a file or cannot be written
is one line before anything is created; a restarted run logs each step to W&B and TensorBoard
once. CLI in-process, tiny models."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from bad_input_fixtures import REPO, TRAIN_FAST, digest, one_line_error
from flax import nnx
from model_fixtures import random_model

from lwm.cli.main import main
from lwm.config import load_config
from lwm.models.config import ModelConfig
from lwm.models.io import save_model
from lwm.models.transformer import Transformer


def _train(wd, *extra) -> list[str]:
    return ["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST, *extra]


def _run_model_config() -> ModelConfig:
    """The model `_train` trains (train_debug with TRAIN_FAST's overrides)."""
    overrides = [a.removeprefix("--config.") for a in TRAIN_FAST if a.startswith("--config.model")]
    return ModelConfig.from_dict(load_config("train_debug", overrides).model)


@pytest.fixture(scope="module")
def init_sources(tmp_path_factory):
    """Checkpoints `--init-from` must refuse: not a checkpoint, another shape, a vision model
    into the text model being trained."""
    root = tmp_path_factory.mktemp("init_from")
    cfg = _run_model_config()
    empty = root / "not_a_checkpoint"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello\n")
    other = root / "other_shape"
    wide = cfg.replace(hidden_size=2 * cfg.hidden_size)
    save_model(other, random_model(lambda: Transformer(wide, rngs=nnx.Rngs(0))))
    vision = root / "vision"
    vcfg = cfg.replace(vision_vocab_size=16, vision_eof_id=14, vision_eov_id=15)
    save_model(vision, random_model(lambda: Transformer(vcfg, rngs=nnx.Rngs(0))))
    return {"not a checkpoint": empty, "another shape": other, "vision into text": vision}


MESSAGES = {
    "not a checkpoint": "no checkpoint in",
    "another shape": "has shape",
    "vision into text": "is not in the model",
}


@pytest.mark.parametrize("why", list(MESSAGES))
def test_failed_init_from_leaves_no_new_workdir(tmp_path, init_sources, capsys, why):
    src = init_sources[why]
    before = digest(src)
    wd = tmp_path / "runs" / "wd"  # its parent is new too
    capsys.readouterr()
    rc = main(_train(wd, "--init-from", str(src)))
    one_line_error(capsys, 2, rc, "train.init_from", MESSAGES[why])
    assert not (tmp_path / "runs").exists()  # no config.json, metrics.jsonl, checkpoints/
    assert digest(src) == before


def test_failed_init_from_keeps_what_was_there(tmp_path, init_sources, capsys):
    """An existing workdir (here holding only a copied tokenizer) is never removed, nor its
    files; only what the failed run added goes."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "tokenizer.json").write_text("{}\n")
    before = digest(wd)
    capsys.readouterr()
    rc = main(_train(wd, "--init-from", str(init_sources["another shape"])))
    one_line_error(capsys, 2, rc, "has shape")
    assert digest(wd) == before


def test_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "wd"
    f.write_text("not a directory\n")
    before = digest(tmp_path)
    for wd in (f, f / "sub"):
        rc = main(_train(wd))
        one_line_error(capsys, 2, rc, "--workdir", f"{f} is not a directory")
    assert digest(tmp_path) == before


def _read_only_cmd(ro: pathlib.Path, argv: list[str]) -> list[str] | None:
    """A command running `lwm ARGV` where `ro` is read-only for it, or None where that cannot be
    arranged: a non-root user gets `chmod 0555`; root (whom modes do not stop) gets a read-only
    bind mount in a user + mount namespace (`unshare -rm`)."""
    lwm = [sys.executable, "-m", "lwm.cli.main", *argv]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return lwm
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {ro} {ro} && ! touch {ro}/x"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return None
    script = f'mount --bind -o ro "{ro}" "{ro}" && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, "sh", *lwm]


def test_workdir_on_read_only_place_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    wd = ro / "runs" / "wd"
    cmd = _read_only_cmd(ro, _train(wd))
    if cmd is None:
        pytest.skip(
            "running as root and no user+mount namespace (unshare -rm) for a read-only bind"
        )
    before = digest(ro)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    ro.chmod(0o755)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 74, proc.stderr
    assert len(lines) == 1 and str(wd) in lines[0] and "cannot be written" in lines[0], lines
    assert digest(ro) == before


def test_demo_video_bad_clip_leaves_nothing(tmp_path, capsys):
    clip = tmp_path / "bad.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # an mp4 header, no video
    wd = tmp_path / "demo"
    rc = main(["demo", "--video", "--workdir", str(wd), f"--config.demo.clips=('{clip}',)"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "no readable video clips" in err.splitlines()[-1]
    assert not wd.exists()  # not even demo.json


def test_vqgan_bad_data_leaves_nothing(tmp_path, capsys):
    wd = tmp_path / "vq"
    rc = main(
        ["vqgan", "train", "--config", "vqgan_small", "--workdir", str(wd)]
        + [
            "--data",
            str(tmp_path / "missing.mp4"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not wd.exists()


# -- metric sinks across a restart ----------------------------------------------------------------


def _tb_points(logdir: pathlib.Path) -> dict[str, list[int]]:
    """Every scalar point TensorBoard shows, per tag, as a list of steps (a duplicate shows
    twice), purges applied as TensorBoard applies them (events at and after a SessionLog START's
    step in earlier files are dropped)."""
    from metric_readers import tfrecords
    from tensorboardX.proto import event_pb2

    out: dict[str, list[int]] = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        for rec in tfrecords(f):
            ev = event_pb2.Event()
            ev.ParseFromString(rec)
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                out = {t: [s for s in steps if s < ev.step] for t, steps in out.items()}
            if ev.HasField("summary"):
                for v in ev.summary.value:
                    out.setdefault(v.tag, []).append(int(ev.step))
    return out


def _records(steps) -> list[dict]:
    return [{"step": s, "stage": 0, "seq_len": 64, "loss": 3.0 - 0.25 * s} for s in steps]


def _write(sinks, records) -> None:
    for r in records:
        for s in sinks:
            s.write(r)
    for s in sinks:
        s.close()


def test_restart_logs_each_step_once_to_wandb_and_tensorboard(tmp_path, monkeypatch):
    """A run logs steps 1-3, is killed, and resumes from its checkpoint at step 1: W&B (which
    cannot rewind) must not get steps 2-3 again; a fresh start over a run killed before its
    first checkpoint must not show TensorBoard's steps twice."""
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboardX")
    from metric_readers import wandb_history

    from lwm.training.config import TrainConfig
    from lwm.training.sinks import make_sinks

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train = TrainConfig(wandb_project="lwm-test", tensorboard=True)
    _write(make_sinks(train, tmp_path, {}, resume_step=0), _records([1, 2, 3]))
    _write(make_sinks(train, tmp_path, {}, resume_step=1), _records([2, 3, 4]))
    rows = [
        r
        for f in sorted(tmp_path.glob("wandb/wandb/offline-run-*/run-*.wandb"))
        for r in wandb_history(f)
    ]
    assert [r["_step"] for r in rows] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in rows] == [2.75, 2.5, 2.25, 2.0]
    assert _tb_points(tmp_path / "tensorboard")["train/loss"] == [1, 2, 3, 4]

    tb_only = TrainConfig(tensorboard=True)
    fresh = tmp_path / "fresh"
    _write(make_sinks(tb_only, fresh, {}, resume_step=0), _records([1, 2]))  # killed: no ckpt
    _write(make_sinks(tb_only, fresh, {}, resume_step=0), _records([1, 2, 3]))
    assert _tb_points(fresh / "tensorboard")["train/loss"] == [1, 2, 3]
    assert np.diff([r["step"] for r in map(dict, _jsonl(fresh))]).tolist() == [1, 1]


def _jsonl(wd):
    from lwm.training.metrics import read_metrics

    return read_metrics(wd / "metrics.jsonl")
