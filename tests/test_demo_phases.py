"""The demo skeleton without running it: the stage table shows what the trainer runs (inherited
fields resolved), phase timing, and the trainer's hook registry refusing bad hooks."""

import pytest

from lwm.config import load_config
from lwm.demo.phases import DemoPaths, Phases, stage_table
from lwm.errors import LwmError
from lwm.training.config import stage_section
from lwm.training.hooks import Hooks


def test_stage_table_prints_resolved_stage_values(tmp_path):
    config = load_config("demo_smoke")
    # Stage 2 inherits theta, steps and seq_len from the model / train sections.
    config.stages[1] = stage_section(batch_tokens=1024, max_sequence_length=256)
    config.model.rope_theta = 12345.0
    config.train.seq_len, config.train.steps = 256, 3
    lines, last = stage_table(config, DemoPaths(tmp_path), {"0": 90.0})
    assert lines[2] == "| 1 | 128 | 10000 | 2 | nan | 1.5 min |"
    assert lines[3] == "| 2 | 256 | 12345 | 3 | nan | - |"
    assert last == {}


def test_phases_time_in_order():
    phases = Phases()
    with phases("data"):
        pass
    with phases("training"):
        pass
    assert list(phases.seconds) == ["data", "training"]
    assert phases.summary_line().startswith(
        "Wall time of this invocation: data 0.0 min, training 0.0 min (a resumed run"
    )
    with pytest.raises(RuntimeError), phases("evals"):
        raise RuntimeError("failed phase")
    assert "evals" not in phases.seconds  # a phase that failed is not reported as done


def test_hooks_refuse_unknown_events_and_bad_periods():
    hooks = Hooks()
    with pytest.raises(LwmError, match="hook event 'stage_begin'"):
        hooks.add(print, event="stage_begin")
    with pytest.raises(LwmError, match="every=0"):
        hooks.add(print, every=0)
