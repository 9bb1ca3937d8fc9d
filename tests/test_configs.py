"""Every config file loads and builds; overrides are typed and never evaluated."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest

from lwm.config import apply_overrides, load_config, split_config_overrides
from lwm.errors import ConfigError
from lwm.models.config import ModelConfig

CONFIG_FILES = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))


def test_presets_exist():
    names = {p.stem for p in CONFIG_FILES}
    assert {"debug", "tiny", "200m", "1b", "7b", "lwm-7b"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads(path):
    config = load_config(str(path))
    assert isinstance(config, ml_collections.ConfigDict)
    if "model" in config:
        ModelConfig.from_dict(config.model)


def test_llama2_7b_and_lwm_shapes():
    from lwm.models.stats import param_count

    cfg = ModelConfig.from_dict(load_config("7b").model)
    assert param_count(cfg) == 6_738_415_616  # LLaMA-2 7B
    lwm7b = ModelConfig.from_dict(load_config("lwm-7b").model)
    assert (lwm7b.vision_vocab_size, lwm7b.vision_eof_id, lwm7b.vision_eov_id) == (8448, 8192, 8193)


def test_overrides_are_typed():
    config = load_config(
        "debug",
        [
            "model.num_layers=3",
            "model.rope_theta=1e6",
            "model.scan_layers=true",
            "model.attention.backend=ring",
            "model.attention.causal_block_size=64",
        ],
    )
    assert config.model.num_layers == 3
    assert config.model.rope_theta == 1e6
    assert config.model.scan_layers is True
    assert config.model.attention.backend == "ring"
    assert config.model.attention.causal_block_size == 64


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.num_layerz=3", "no such field"),
        ("model.num_layers=three", "expected an int"),
        ("model.scan_layers=maybe", "expected a bool"),
        ("nope.x=1", "no field 'nope'"),
        ("model.num_layers", "key=value"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("debug", [override])


def test_literal_eval_never_runs_code(tmp_path):
    config = ml_collections.ConfigDict({"x": (1, 2)})
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        apply_overrides(config, [f"x=__import__('pathlib').Path('{marker}').touch()"])
    assert not marker.exists()
    assert apply_overrides(config, ["x=(3, 4)"]).x == (3, 4)


def test_split_config_overrides():
    rest, overrides = split_config_overrides(
        ["train", "--config", "debug", "--config.model.num_layers=2", "--config.seed", "3", "-v"]
    )
    assert rest == ["train", "--config", "debug", "-v"]
    assert overrides == ["model.num_layers=2", "seed=3"]


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return 1 / 0\n")
    with pytest.raises(ConfigError, match="ZeroDivisionError"):
        load_config(str(broken))


def test_derived_head_dim_follows_width_and_heads():
    """A config built on a preset that changes the width or head count gets hidden / heads as its
    head size, not the preset's (the demo once trained 16-wide heads instead of 32 this way)."""
    from lwm.models.presets import base_config

    config = base_config("debug")
    config.model.hidden_size, config.model.num_heads = 128, 4
    assert ModelConfig.from_dict(config.model.to_dict()).head_dim == 32
    assert ModelConfig.from_dict(base_config("debug").model.to_dict()).head_dim == 16
    demo = load_config("demo").model
    assert ModelConfig.from_dict(demo.to_dict()).head_dim == demo.hidden_size // demo.num_heads


@pytest.mark.parametrize(
    "path",
    # LWM's pod recipes (lwm_*.py) are checked on their pod sizes in test_lwm_recipes.py.
    [p for p in CONFIG_FILES if "stages" in p.read_text() and not p.stem.startswith("lwm_")],
    ids=lambda p: p.stem,
)
def test_staged_configs_fit_their_meshes_on_8_devices(path):
    """Every stage of a staged config (the demos) splits its batch and rows over its mesh on the
    8 devices the demos run on, so a bad stage fails here, not minutes into `make demo`."""
    from lwm.training.run_spec import parse_run

    run = parse_run(load_config(str(path)), num_devices=8)
    assert len(run.stages) == max(1, len(load_config(str(path)).stages))


def test_override_of_another_type_is_one_config_error():
    config = ml_collections.ConfigDict({"ratio": [1.0, 0.5]})
    with pytest.raises(ConfigError, match=r"config.ratio: 0.5 is a float, the field holds a list"):
        apply_overrides(config, ["ratio=0.5"])
    assert config.ratio == [1.0, 0.5]
    assert apply_overrides(config, ["ratio=[0.25, 0.25]"]).ratio == [0.25, 0.25]
