"""`lwm.config.parse_section`: the one parser behind every typed config's `from_dict`."""

import dataclasses
import json

import ml_collections
import pytest

from lwm.attention.config import AttentionConfig
from lwm.config import load_config, parse_section
from lwm.data.config import DataConfig
from lwm.errors import ConfigError
from lwm.inference.prompts import PromptTemplate
from lwm.models.config import ModelConfig
from lwm.training.config import (
    LEGACY_INHERIT,
    StageConfig,
    TrainConfig,
    resolve_stages,
    stage_section,
)
from lwm.video.config import VQGANConfig
from lwm.video.vqgan_train import FrameDataConfig, VQGANTrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 1
    """A nested field."""


@dataclasses.dataclass(frozen=True)
class Outer:
    rate: float = 0.5
    """A float."""
    count: int = 2
    """An int."""
    flag: bool = False
    """A bool."""
    names: tuple[str, ...] = ()
    """A tuple."""
    limit: int | None = None
    """Optional."""
    sizes: dict[str, int] | None = None
    """A mapping."""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """A nested section."""


def test_types_are_coerced_from_the_annotations():
    got = parse_section(
        Outer,
        ml_collections.ConfigDict(
            dict(rate=1, count=1e3, names=["a", "b"], sizes={"sp": 2}, inner={"size": 3})
        ),
        "outer",
    )
    assert got == Outer(1.0, 1000, False, ("a", "b"), None, {"sp": 2}, Inner(3))
    assert isinstance(got.rate, float) and isinstance(got.count, int)
    assert parse_section(Outer, None, "outer") == Outer()
    assert parse_section(Outer, {"inner": None}, "outer") == Outer()
    existing = Outer(rate=2.0)
    assert parse_section(Outer, existing, "outer") is existing


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(ratee=1), "unknown outer fields: ['ratee']; allowed: count, flag, inner, limit,"),
        (dict(count=1.5), "outer.count: expected int, got 1.5"),
        (dict(count="3"), "outer.count: expected int, got '3'"),
        (dict(flag="yes"), "outer.flag: expected bool, got 'yes'"),
        (dict(names="ab"), "outer.names: expected a sequence"),
        (dict(names=[1]), "outer.names[0]: expected str, got 1"),
        (dict(limit="x"), "outer.limit: expected int, got 'x'"),
        (dict(sizes={"sp": "x"}), "outer.sizes.sp: expected int, got 'x'"),
        (dict(inner={"sise": 1}), "unknown outer.inner fields: ['sise']; allowed: size"),
        (dict(inner={"size": "big"}), "outer.inner.size: expected int, got 'big'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        parse_section(Outer, values, "outer")
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "build, section",
    [
        (ModelConfig.from_dict, "model"),
        (lambda d: ModelConfig.from_dict({"attention": d}), "model.attention"),
        (TrainConfig.from_dict, "train"),
        (lambda d: StageConfig.from_dict(d, 2), "stages[2]"),
        (lambda d: StageConfig.from_dict({"data": d}, 2), "stages[2].data"),
        (DataConfig.from_dict, "data"),
        (VQGANConfig.from_dict, "vqgan"),
        (VQGANTrainConfig.from_dict, "train"),
        (FrameDataConfig.from_dict, "data"),
    ],
)
def test_every_from_dict_refuses_unknown_keys_the_same_way(build, section):
    with pytest.raises(ConfigError) as info:
        build({"no_such_field": 1})
    assert str(info.value).startswith(f"unknown {section} fields: ['no_such_field']; allowed: ")


def test_model_literals_and_nested_attention():
    cfg = ModelConfig.from_dict(
        {"rope_theta": 1000000, "attention": {"backend": "ring", "causal_block_size": 64}}
    )
    assert cfg.rope_theta == 1e6 and cfg.attention == AttentionConfig("ring", causal_block_size=64)
    with pytest.raises(ConfigError, match="^model.attention.layout 'diagonal': expected one of"):
        ModelConfig.from_dict({"attention": {"layout": "diagonal"}})
    # the JSON a checkpoint stores (lists, no tuples) round-trips
    stored = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(stored) == cfg
    vq = VQGANConfig.from_dict(load_config("vqgan_small").vqgan)
    assert VQGANConfig.from_dict(json.loads(json.dumps(vq.to_dict()))) == vq
    assert FrameDataConfig.from_dict({"paths": ["a.mp4"]}).paths == ("a.mp4",)


def test_prompt_template_unknown_field(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"system": "hi", "sytem": "x"}))
    with pytest.raises(ConfigError, match=r"^unknown prompt template .*t.json fields: \['sytem'\]"):
        PromptTemplate.from_json(path)
    path.write_text(json.dumps({"system": "hi", "bos": False}))
    assert PromptTemplate.from_json(path) == PromptTemplate(system="hi", bos=False)


def test_stage_none_inherits_and_legacy_spellings_mean_the_same():
    train = TrainConfig(seq_len=128, steps=7, batch_tokens=1024, lr=1e-3, warmup_steps=3)
    inherit = resolve_stages(train, [{}], 1e4, 256)
    legacy = resolve_stages(train, [dict(LEGACY_INHERIT)], 1e4, 256)
    explicit_none = resolve_stages(train, [stage_section()], 1e4, 256)
    assert inherit == legacy == explicit_none
    st = inherit[0]
    assert (st.seq_len, st.steps, st.batch_size, st.rope_theta) == (128, 7, 8, 1e4)
    assert (st.lr, st.warmup_steps, st.max_sequence_length) == (1e-3, 3, 256)
    # a set value wins, and 0 warmup (no warmup) is a value, not "inherit"
    st = resolve_stages(train, [dict(rope_theta=1e6, warmup_steps=0, schedule="constant")], 1, 1)
    assert (st[0].rope_theta, st[0].warmup_steps, st[0].schedule) == (1e6, 0, "constant")
    assert stage_section().rope_theta is None


@pytest.mark.parametrize(
    "stage, message",
    [
        (dict(seq_len=-8), "stages[0].seq_len must be >= 1 (or None to inherit)"),
        (dict(rope_theta=-1.0), "stages[0].rope_theta must be > 0"),
        (dict(warmup_steps=-2), "stages[0].warmup_steps must be >= 0"),
        (dict(schedule="cos"), "stages[0].schedule 'cos': expected one of warmup_cosine,"),
    ],
)
def test_stage_out_of_range_values_are_refused(stage, message):
    with pytest.raises(ConfigError) as info:
        resolve_stages(TrainConfig(), [stage], 1e4, 4096)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
