"""`scripts/device_check.sh --cpu-dry-run`: every phase of the accelerator check runs end to end on
CPU with tiny shapes and writes its JSON lines (the device run is the same script)."""

import json
import os
import pathlib
import subprocess
import sys

from conftest import REPO_ROOT


def test_device_check_cpu_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [str(REPO_ROOT / "scripts" / "device_check.sh"), "--cpu-dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = pathlib.Path(tmp_path) / "device_check.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    errors = [r for r in records if "error" in r]
    assert not errors, errors
    by_phase = {}
    for r in records:
        by_phase.setdefault(r["phase"], []).append(r)
    assert by_phase["header"][0]["dry_run"] is True
    parity = by_phase["parity"]
    assert {r["dtype"] for r in parity} == {"float32", "bfloat16"} and all(r["ok"] for r in parity)
    timed = {r["name"]: r for r in by_phase["attention"] if "fwd_bwd_s" in r}
    assert any(n.startswith("pallas[") for n in timed) and "xla-blockwise" in timed
    assert all(r["fwd_bwd_s"] > 0 and r["fwd_bwd_tflops"] > 0 for r in timed.values())
    assert [r.get("skipped") for r in by_phase["attention"] if r["name"] == "cudnn"] == [
        "cuDNN needs a GPU"
    ]
    (train,) = by_phase["train"]
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] and train["loss"] > 0
    assert all(r["tokens_per_s"] > 0 for r in by_phase["decode"])
    assert by_phase["done"][0]["total_s"] > 0
