"""`lwm plan`: AOT-compiled train steps report sane per-device memory and FLOPs; ring attention's
temporaries grow about linearly in T at fixed sp, dense attention's about quadratically; bad input
fails on one line before any compile."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lwm.cli.main import main
from lwm.models.config import ModelConfig
from lwm.models.stats import param_count
from lwm.training.flops import train_flops_per_token
from lwm.training.plan import format_bytes, parse_bytes

# Two stages (T = 256 and 1024) of a one-layer model on a mesh with sp = 4.
CONFIG = textwrap.dedent(
    """
    import ml_collections
    from lwm.models.presets import base_config
    from lwm.training.config import default_train_section, stage_section

    def get_config():
        config = base_config("debug")
        config.model.num_layers = 1
        config.model.attention.backend = "ring"
        config.model.attention.query_chunk_size = 32
        config.model.attention.key_chunk_size = 32
        config.mesh = ml_collections.ConfigDict(dict(dp=2, fsdp=1, tp=1, sp=4))
        config.train = default_train_section(progress_bar=False)
        config.stages = [
            stage_section(seq_len=256, batch_tokens=512, steps=1),
            stage_section(seq_len=1024, batch_tokens=2048, steps=1, max_sequence_length=1024),
        ]
        return config
    """
)
BUDGET = "6MiB"


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan_cfg.py"
    path.write_text(CONFIG)
    return path


def _plans(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def ring_plans(config_path):
    """Planned in this process (8 devices: dp=2 x sp=4, one sequence per device)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["plan", "--config", str(config_path), "--json", "--memory-per-device", BUDGET])
    assert rc == 0
    return _plans(buf.getvalue())


@pytest.fixture(scope="module")
def dense_plans(config_path):
    """`--devices 4` from a process that already has 8 devices: re-runs itself in a subprocess
    (dp=1 x sp=4, one sequence per device, as the ring plan)."""
    env = dict(os.environ)
    args = [
        "plan",
        "--config",
        str(config_path),
        "--devices",
        "4",
        "--json",
        "--memory-per-device",
        BUDGET,
        "--config.mesh.dp=1",
        "--config.model.attention.backend=dense",
        "--config.stages.0.batch_tokens=256",
        "--config.stages.1.batch_tokens=1024",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "lwm.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _plans(proc.stdout)


def test_plan_reports_sane_numbers(ring_plans):
    assert [p["seq_len"] for p in ring_plans] == [256, 1024]
    for p in ring_plans:
        assert p["mesh"] == {"dp": 2, "fsdp": 1, "tp": 1, "sp": 4} and p["devices"] == 8
        assert p["attention"] == "ring" and p["batch_size"] == 2
        m = p["memory"]
        param_bytes = 4 * p["params"]
        batch_bytes = 7 * 4 * p["seq_len"] * p["batch_size"] // 8  # 7 arrays, <= 4 B, sharded
        # Params + two Adam moments, sharded at most 8 ways and at worst replicated.
        assert 3 * param_bytes / 8 <= m["arguments"] <= 3 * param_bytes + 8 * batch_bytes
        # The donated state is reused for the new state.
        assert m["aliased"] >= 0.9 * 3 * param_bytes / 8
        assert m["temporaries"] > 0
        assert m["total"] == (
            m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["generated_code"]
        )
        assert p["memory_per_device"] == 6 * 2**20
        assert p["fits"] == (m["total"] <= p["memory_per_device"])
        assert p["xla_flops_per_device"] > 0 and p["compile_seconds"] > 0
    # Against the model's own analytic counts.
    from lwm.config import load_config

    model = ModelConfig.from_dict(load_config("debug", ["model.num_layers=1"]).model)
    assert ring_plans[0]["params"] == param_count(model)
    for p in ring_plans:
        expected = train_flops_per_token(model, p["seq_len"]) * p["seq_len"] * p["batch_size"]
        assert p["model_flops_per_step"] == pytest.approx(expected, rel=1e-9)
    # XLA's per-device count covers at least the useful work's share (remat or not).
    assert ring_plans[0]["xla_flops_per_device"] * 8 > 0.5 * ring_plans[0]["model_flops_per_step"]


def test_ring_temporaries_linear_dense_quadratic(ring_plans, dense_plans):
    assert [p["devices"] for p in dense_plans] == [4, 4]
    assert [p["attention"] for p in dense_plans] == ["dense", "dense"]
    ring = [p["memory"]["temporaries"] for p in ring_plans]
    dense = [p["memory"]["temporaries"] for p in dense_plans]
    # T x 4: linear growth is at most 4x, quadratic approaches 16x.
    assert ring[1] / ring[0] < 4.5, ring
    assert dense[1] / dense[0] > 7, dense
    assert dense[1] > 2 * ring[1]
    # The budget check: the short dense stage fits in 6 MiB, the long one does not.
    assert [p["fits"] for p in dense_plans] == [True, False], [
        format_bytes(p["memory"]["total"]) for p in dense_plans
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.mesh.dp=3"], "has 12 devices but 8 are available"),
        (["--seq-len", "1000"], "not divisible by sp x query_chunk_size"),
        (["--stage", "5"], "--stage 5: the config has 2 stage(s)"),
        (["--memory-per-device", "lots"], "memory size 'lots'"),
        (["--devices", "0"], "--devices must be >= 1"),
    ],
)
def test_bad_input_one_line_error(config_path, capsys, args, message):
    rc = main(["plan", "--config", str(config_path), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_parse_bytes():
    assert parse_bytes("16GiB") == 16 * 2**30
    assert parse_bytes("95G") == 95 * 10**9
    assert parse_bytes("1.5 TiB") == int(1.5 * 2**40)
    assert parse_bytes("4096") == 4096
    assert format_bytes(3 * 2**20) == "3.00 MiB"
