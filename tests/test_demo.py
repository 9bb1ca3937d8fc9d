"""`lwm demo` end to end in miniature (configs/demo_smoke.py): data generation, three ring-attention
stages on 8 simulated devices, needle evals, plots and summary; a rerun resumes everything."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from lwm.cli.main import main as lwm_main


def test_demo_smoke_runs_and_resumes(tmp_path, capsys):
    wd = tmp_path / "demo"
    args = ["demo", "--config", "demo_smoke", "--workdir", str(wd), "--seed", "3"]
    assert lwm_main(args) == 0
    out = capsys.readouterr().out
    assert "Needle accuracy, single" in out and "| 256 | 1K |" in out.replace(
        "256 | 1K", "256 | 1K"
    )
    res = wd / "results"
    for name in (
        "summary.md",
        "summary.json",
        "loss_curve.png",
        "heatmap_single.png",
        "heatmap_multi4.png",
        "stage_times.json",
    ):
        assert (res / name).is_file(), name
    summary = json.loads((res / "summary.json").read_text())
    # The run's seed: recorded in the workdir, named in the summary, the trainer's seed.
    assert summary["seed"] == 3 and "Seed 3 " in (res / "summary.md").read_text()
    assert json.loads((wd / "demo.json").read_text()) == {"demo": "text", "seed": 3}
    assert json.loads((wd / "train" / "config.json").read_text())["train"]["seed"] == 3
    assert set(summary["stage_seconds"]) == {"0", "1", "2"}
    assert set(summary["phase_seconds"]) == {"data", "training", "evals"}
    assert summary["evals"]["single"]["lengths"] == [256, 1024]
    assert sum(map(sum, summary["evals"]["single"]["counts"])) == 4
    metrics = [json.loads(x) for x in (wd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({m["stage"] for m in metrics}) == [0, 1, 2]
    assert [m["seq_len"] for m in metrics if m["stage"] == 2] == [512]
    stamp = {p: p.stat().st_mtime_ns for p in (wd / "data").iterdir()}
    n_results = len((res / "needle_single" / "results.jsonl").read_text().splitlines())
    # Rerun: nothing regenerated, retrained or re-answered.
    assert lwm_main(args) == 0
    assert "already done" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (wd / "data").iterdir()} == stamp
    # Another seed into this workdir: one line, nothing touched.
    everything = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
    assert lwm_main([*args[:-1], "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 3, not 4" in err[0]
    assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == everything
    assert len((res / "needle_single" / "results.jsonl").read_text().splitlines()) == n_results
    assert json.loads((res / "stage_times.json").read_text()) == summary["stage_seconds"]


def test_demo_interrupted_training_runs_no_evals_and_resumes(tmp_path, capsys, monkeypatch):
    """SIGTERM in training: the trainer saves its step and stops; the demo must then exit 75 with
    one line, not evaluate the partly trained model (its answers would be kept by the rerun's
    resumed evals); the rerun trains the rest and then evaluates."""
    from lwm.demo import phases

    attach = phases.StageTimes.attach

    def attach_and_signal(self, trainer):
        attach(self, trainer)
        trainer.add_hook(lambda info: info.step == 1 and os.kill(os.getpid(), signal.SIGTERM))

    monkeypatch.setattr(phases.StageTimes, "attach", attach_and_signal)
    handler = signal.getsignal(signal.SIGTERM)
    wd = tmp_path / "demo"
    args = ["demo", "--config", "demo_smoke", "--workdir", str(wd), "--config.stages.0.steps=4"]
    assert lwm_main(args) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lwm demo: interrupted by SIGTERM at step 2 (stage 1 of 3): checkpoint saved, no evals "
        "run; rerun the same command to continue (exit 75)"
    ), err[-3:]
    res = wd / "results"
    assert not (res / "summary.md").exists() and not (res / "needle_single").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the trainer's handler is gone
    monkeypatch.undo()
    assert lwm_main(args) == 0
    summary = json.loads((res / "summary.json").read_text())
    metrics = [json.loads(x) for x in (wd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 6  # 4 + 1 + 1: every stage trained to its end
    assert sum(map(sum, summary["evals"]["single"]["counts"])) == 4


def test_demo_cli_sets_host_devices_before_jax():
    code = (
        "import sys, os; os.environ.pop('XLA_FLAGS', None)\n"
        "from lwm.demo.pipeline import ensure_host_devices\n"
        "import lwm.cli.main as m; m.build_parser()\n"
        "assert 'jax' not in sys.modules\n"
        "ensure_host_devices(8)\n"
        "import jax; print(jax.device_count())\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "8"


@pytest.mark.parametrize(
    "override, match",
    [
        ("demo.copy_ratio=[1.0, 0.5]", "demo.copy_ratio .*one per demo.task_buckets entry"),
        ("demo.copy_digit_fraction=2.0", "copy_digit_fraction must be in"),
        ("demo.task_buckets=[[10, 5, 3]]", "needs min_tokens <= max_tokens"),
    ],
)
def test_demo_bad_data_fields_fail_before_any_work(tmp_path, capsys, override, match):
    wd = tmp_path / "demo"
    assert lwm_main(["demo", "--workdir", str(wd), f"--config.{override}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not wd.exists()
