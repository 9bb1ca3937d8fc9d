"""device_check's `sp` phase (scripts/device_phase_sp.py) end to end at its --cpu-dry-run shapes
on the 8 simulated devices: ring, ulysses and hybrid each timed, no errors, ratios to the ring."""

import importlib.util
import json

from conftest import REPO_ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sp_phase_dry_run(tmp_path):
    check, phase_sp = _script("device_check"), _script("device_phase_sp")
    rec = check.Recorder(tmp_path, {"device_kind": "cpu"})
    phase_sp.run_sp(check.Phase("sp", check.BUDGET_S["sp"], rec), dry=True)
    lines = (tmp_path / "device_check.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r.get("error") for r in records] == [None] * 3, records
    by_name = {r["name"]: r for r in records}
    assert list(by_name) == ["ring", "ulysses", "hybrid"]
    assert {r["sp"] for r in records} == {8} and by_name["hybrid"]["ulysses"] == 4
    assert all(r["fwd_bwd_s"] > 0 and r["tokens_per_s"] > 0 for r in records)
    ring_s = by_name["ring"]["fwd_bwd_s"]
    for name in ("ulysses", "hybrid"):
        assert abs(by_name[name]["speed_vs_ring"] - ring_s / by_name[name]["fwd_bwd_s"]) < 1e-9
    assert "speed_vs_ring" not in by_name["ring"]
