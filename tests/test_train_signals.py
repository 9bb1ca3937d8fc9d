"""Stops at stage boundaries: SIGTERM or max_steps due in a stage's last step (whose checkpoint
is the stage's end) must stop the run there, preempted, and the rerun must start the next stage;
a signal inside a stage is covered end to end in test_train_resume.py."""

import os
import signal

from lwm.config import load_config
from lwm.training.config import stage_section
from lwm.training.metrics import read_metrics
from lwm.training.run_spec import parse_run
from lwm.training.trainer import Trainer


def _spec():
    cfg = load_config("train_debug", ["train.progress_bar=False", "train.save_every=100"])
    cfg.stages = [
        stage_section(seq_len=64, steps=3, batch_tokens=512),
        stage_section(seq_len=128, steps=2, batch_tokens=1024),
    ]
    return parse_run(cfg)


def test_signal_in_a_stages_last_step_stops_at_its_end(tmp_path):
    wd, logs = tmp_path / "run", []
    handler = signal.getsignal(signal.SIGTERM)
    first = Trainer(_spec(), wd, log=logs.append)
    first.add_hook(lambda info: info.step == 3 and os.kill(os.getpid(), signal.SIGTERM))
    res = first.run()
    assert res.preempted and (res.step, res.stage) == (3, 0), res
    assert "lwm train: SIGTERM: saved step 3, exiting" in logs
    assert signal.getsignal(signal.SIGTERM) == handler
    assert max(r["step"] for r in read_metrics(wd / "metrics.jsonl")) == 3  # stage 2 not begun
    again = Trainer(_spec(), wd, log=lambda m: None).run()
    assert not again.preempted and (again.step, again.stage) == (5, 1)
    assert [r["stage"] for r in read_metrics(wd / "metrics.jsonl")] == [0, 0, 0, 1, 1]


def test_max_steps_at_a_stage_end_stops_there(tmp_path):
    wd = tmp_path / "run"
    res = Trainer(_spec(), wd, log=lambda m: None, max_steps=3).run()
    assert res.preempted and (res.step, res.stage) == (3, 0), res
    assert max(r["step"] for r in read_metrics(wd / "metrics.jsonl")) == 3
