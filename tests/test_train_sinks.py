"""Metric sinks without training: the W&B sink against our own reader of its offline run file,
TensorBoard tags, and one-line errors for a sink asked for but not installed."""

import sys

import pytest
from metric_readers import tensorboard_scalars, wandb_history

from lwm.cli.main import main
from lwm.config import load_config
from lwm.errors import ConfigError
from lwm.training.config import TrainConfig
from lwm.training.run_spec import parse_run
from lwm.training.sinks import make_sinks

RECORDS = [
    {"step": 1, "stage": 0, "seq_len": 64, "loss": 2.5, "text_loss": 2.25, "lr": 1e-3},
    {"step": 2, "stage": 0, "seq_len": 64, "loss": 2.125, "eval_loss": 2.75, "mfu": float("nan")},
]


def test_wandb_offline_run_holds_the_records_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train = TrainConfig(wandb_project="lwm-test", tensorboard=True)
    sinks = make_sinks(train, tmp_path, {"train": {"lr": 1e-3}}, resume_step=0)
    for r in RECORDS[:1]:
        for s in sinks:
            s.write(r)
    for s in sinks:
        s.close()
    # A restart (from step 1) continues the same W&B run and purges TensorBoard after step 1.
    sinks = make_sinks(train, tmp_path, {"train": {"lr": 1e-3}}, resume_step=1)
    for s in sinks:
        s.write(RECORDS[1])
        s.close()
    run_files = sorted(tmp_path.glob("wandb/wandb/offline-run-*/run-*.wandb"))
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    assert len(run_files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in run_files)
    rows = [r for f in run_files for r in wandb_history(f)]
    assert [r["_step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 2.5 and rows[0]["train/text_loss"] == 2.25
    assert rows[1]["train/loss"] == 2.125 and rows[1]["eval/loss"] == 2.75
    assert "train/mfu" not in rows[1] and "train/step" not in rows[0]  # NaN and keys left out
    tb = tensorboard_scalars(tmp_path / "tensorboard")
    assert tb["train/loss"] == {1: 2.5, 2: 2.125} and tb["eval/loss"] == {2: 2.75}
    assert [r["step"] for r in map(dict, _jsonl(tmp_path))] == [1, 2]


def _jsonl(wd):
    from lwm.training.metrics import read_metrics

    return read_metrics(wd / "metrics.jsonl")


def test_missing_wandb_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    config = load_config("train_debug", ["train.wandb_project=p"])
    with pytest.raises(ConfigError, match="needs wandb"):
        parse_run(config)
    wd = tmp_path / "run"
    args = ["train", "--config", "train_debug", "--workdir", str(wd)]
    assert main([*args, "--config.train.wandb_project=p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0]
    assert not wd.exists()  # refused before anything was written
