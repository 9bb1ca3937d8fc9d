"""`lwm convert from-hf` / `to-hf` across model families and RoPE types.

Oracle: transformers (torch CPU, fp32) on random tiny models of each family: LLaMA with RoPE
default / linear / llama3 / yarn (original context 16, sequences of 40 so the scaling matters),
SmolLM2-shaped LLaMA (tied, explicit head_dim), Qwen2 with q/k/v biases (tied and untied, one with
YaRN) and Mistral without a sliding window; odd sizes, GQA and MQA; config.json in transformers
5.x's spelling (`rope_parameters`) and 4.x's (`rope_theta` + `rope_scaling`, `type` or
`rope_type`). Each goes HF -> lwm (logits within 1e-4) -> HF (transformers loads it and gives
lwm's logits, reading either spelling of what to-hf wrote).
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tokenizer_fixtures import save_hf_tokenizer  # noqa: E402

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402

SEQ = 40
"""Tokens per test sequence: longer than every scaled model's original context (16)."""
YARN = dict(factor=4.0, original_max_position_embeddings=16)
LLAMA3 = dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0)


def _base(**kw):
    base = dict(
        vocab_size=97,
        hidden_size=40,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,  # MQA: 5 query heads share one kv head
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.1,  # logits of order 1, so positions visibly move them
    )
    return {**base, **kw}


def _rope(kind: str | None, theta: float, **params):
    if kind is None:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    return {"rope_parameters": {"rope_type": kind, "rope_theta": theta, **params}}


# name -> (model_type, HF config kwargs, config.json spelling: "5" or "4" with the type key)
FAMILIES = {
    "llama": ("llama", _base(**_rope(None, 5e4)), "5"),
    "llama-linear-4x": ("llama", _base(**_rope("linear", 1e4, factor=2.5)), "4:type"),
    "llama3-4x": (
        "llama",
        _base(
            num_key_value_heads=5,
            tie_word_embeddings=True,
            **_rope("llama3", 5e5, original_max_position_embeddings=16, **LLAMA3),
        ),
        "4:rope_type",
    ),
    "llama-yarn": ("llama", _base(**_rope("yarn", 1e4, **YARN)), "5"),
    "llama-yarn-mscale-4x": (
        "llama",
        _base(
            **_rope(
                "yarn",
                2e4,
                factor=3.0,
                original_max_position_embeddings=16,
                beta_fast=8.0,
                beta_slow=2.0,
                mscale=0.8,
                mscale_all_dim=1.0,
                truncate=False,
            )
        ),
        "4:rope_type",
    ),
    "smollm2": (
        "llama",
        _base(
            hidden_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=10,  # not hidden / heads
            tie_word_embeddings=True,
            vocab_size=520,  # the tokenizer below has 505 ids
            **_rope(None, 1e5),
        ),
        "5",
    ),
    "qwen2": (
        "qwen2",
        _base(hidden_size=36, num_attention_heads=6, num_key_value_heads=2, **_rope(None, 2e4)),
        "4:rope_type",
    ),
    "qwen2.5-tied-yarn": (
        "qwen2",
        _base(
            num_key_value_heads=5,
            tie_word_embeddings=True,
            **_rope("yarn", 1e6, **YARN),
        ),
        "5",
    ),
    "mistral": ("mistral", _base(sliding_window=None, **_rope(None, 1e6)), "5"),
}


def _config_class(model_type: str):
    import transformers

    return {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[model_type]


def _to_v4_spelling(config_path, type_key: str) -> None:
    """Rewrites a saved config.json as transformers 4.x wrote it: top-level rope_theta and a
    `rope_scaling` dict (None for plain RoPE), no `rope_parameters`."""
    config = json.loads(config_path.read_text())
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    config["rope_scaling"] = None if kind == "default" else {type_key: kind, **params}
    config_path.write_text(json.dumps(config))


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def _load_hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _save_family(path, name: str, seed: int = 0):
    """A random HF model of family `name` saved at `path`; returns the model."""
    model_type, kwargs, spelling = FAMILIES[name]
    config_cls, model_cls = _config_class(model_type)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs))
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: make them matter
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith(".bias"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    if spelling.startswith("4"):
        _to_v4_spelling(path / "config.json", spelling.split(":")[1])
    return model


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 97, size=(2, SEQ)).astype(np.int32)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_round_trip_matches_transformers(name, tokens, tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    model = _save_family(hf_dir, name)
    if name == "smollm2":
        save_hf_tokenizer(hf_dir, "llama3")
    want = _hf_logits(model, tokens)
    # The saved directory reads back in transformers as the model itself (both spellings).
    np.testing.assert_allclose(_hf_logits(_load_hf(hf_dir), tokens), want, atol=1e-6)

    ckpt = tmp_path / "ckpt"
    assert main(["convert", "from-hf", str(hf_dir), str(ckpt)]) == 0
    ours_model = lwm.load_model(ckpt)
    ours = np.asarray(ours_model(jnp.asarray(tokens)).logits)
    assert np.max(np.abs(ours - want)) <= 1e-4, name
    model_type, kwargs, _ = FAMILIES[name]
    cfg = ours_model.config
    assert cfg.attention_bias == (model_type == "qwen2")
    assert cfg.tie_word_embeddings == kwargs["tie_word_embeddings"]
    kind = kwargs["rope_parameters"]["rope_type"]
    assert (cfg.rope_scaling.kind if cfg.rope_scaling else "default") == kind

    out = tmp_path / "hf_out"
    assert main(["convert", "to-hf", str(ckpt), str(out)]) == 0
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == ("qwen2" if model_type == "qwen2" else "llama")
    assert written["rope_parameters"]["rope_type"] == kind
    np.testing.assert_allclose(_hf_logits(_load_hf(out), tokens), ours, atol=1e-4)
    if kind != "default":
        # transformers 4.x reads rope_theta + rope_scaling: the same model without rope_parameters.
        v4 = tmp_path / "hf_v4"
        shutil.copytree(out, v4)
        config = json.loads((v4 / "config.json").read_text())
        del config["rope_parameters"]
        (v4 / "config.json").write_text(json.dumps(config))
        np.testing.assert_allclose(_hf_logits(_load_hf(v4), tokens), ours, atol=1e-4)
        # ... and not by accident: plain RoPE gives other logits on 40 > 16 tokens.
        plain = lwm.load_model(ckpt, overrides={"rope_scaling": None})
        assert np.max(np.abs(np.asarray(plain(jnp.asarray(tokens)).logits) - ours)) > 1e-2
    if name == "smollm2":
        _check_tokenizer_travels(hf_dir, ckpt, out, written)
    capsys.readouterr()


def _check_tokenizer_travels(hf_dir, ckpt, out, written) -> None:
    """The HF directory's tokenizer is copied into the checkpoint (found there without
    --tokenizer) and back out by to-hf, with its BOS/EOS ids in config.json."""
    from lwm.data.tokenizer import load_tokenizer
    from lwm.inference.runtime import load_tokenizer as runtime_tokenizer

    source = load_tokenizer(hf_dir)
    for directory in (ckpt, out):
        for name in source.files:
            assert (directory / name).read_bytes() == (hf_dir / name).read_bytes(), name
    found = runtime_tokenizer(None, str(ckpt))
    assert found.encode("def main") == source.encode("def main")
    assert written["bos_token_id"] == source.bos_id
    assert written["eos_token_id"] == list(source.eos_ids)


def test_an_unreadable_tokenizer_is_skipped_with_a_note(tmp_path):
    hf_dir = tmp_path / "hf"
    _save_family(hf_dir, "llama")
    (hf_dir / "tokenizer.json").write_text("{not json")  # unreadable: skipped with a note
    ckpt = tmp_path / "ckpt"
    notes: list[str] = []
    from lwm.interop.hf_convert import convert_from_hf

    convert_from_hf(hf_dir, ckpt, notes=notes)
    assert not (ckpt / "tokenizer.json").exists()
    assert len(notes) == 1 and "tokenizer" in notes[0]


# --- refusals: one line, non-zero exit, nothing written -------------------------------------


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "llama"
    _save_family(path, "llama")
    return path


def _edit(config: dict, edit) -> object:
    if callable(edit):
        return edit(config)
    return {**config, **edit}


@pytest.mark.parametrize(
    "edit, expect",
    [
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            "unsupported RoPE scaling rope_parameters.rope_type='dynamic' (dynamic NTK",
        ),
        (
            {"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}},
            "rope_scaling.rope_type='longrope'",
        ),
        (
            {"rope_scaling": {"rope_type": "yarn", "type": "linear", "factor": 2.0}},
            "rope_scaling: rope_type 'yarn' and type 'linear' disagree",
        ),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": "x"}},
            "rope_parameters.factor: expected a number > 0, got 'x'",
        ),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
            "llama3 RoPE scaling needs low_freq_factor, high_freq_factor",
        ),
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "alpha": 3}},
            "unsupported linear RoPE setting rope_parameters.alpha=3",
        ),
        (
            {"rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e4}},
            "rope_theta 10000 and rope_parameters.rope_theta 50000 disagree",
        ),
        (
            {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 8},
            "sliding_window=8 (shorter than max_position_embeddings 64",
        ),
        (
            {
                "model_type": "qwen2",
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
            },
            "use_sliding_window=true",
        ),
        ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "model_type='gemma2'"),
        (lambda c: [c], "config.json must hold a JSON object, got list"),
        ({"num_attention_heads": 0}, "num_attention_heads: expected an integer >= 1, got 0"),
        ({"vocab_size": "abc"}, "vocab_size: expected an integer >= 1, got 'abc'"),
        ({"num_key_value_heads": 2}, "num_key_value_heads 2 does not divide"),
        ({"rms_norm_eps": -1}, "rms_norm_eps: expected a number > 0"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings: expected true or false"),
        ({"architectures": "LlamaForCausalLM"}, "architectures: expected a list of strings"),
    ],
)
def test_unsupported_or_malformed_configs_are_one_line(
    tiny_llama_dir, tmp_path, capsys, edit, expect
):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(_edit(config, edit)))
    (bad / "model.safetensors").symlink_to(tiny_llama_dir / "model.safetensors")
    out = tmp_path / "out"
    code = main(["convert", "from-hf", str(bad), str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not out.exists()


def test_a_long_mistral_window_masks_nothing_and_is_accepted():
    from lwm.errors import LwmError
    from lwm.interop.hf_config import model_config_from_hf

    config = dict(FAMILIES["mistral"][1], model_type="mistral")
    config["sliding_window"] = 64  # = max_position_embeddings: no query sees more keys
    assert model_config_from_hf(config).max_sequence_length == 64
    del config["sliding_window"]  # absent: MistralConfig's default window of 4096 applies
    config["max_position_embeddings"] = 8192
    with pytest.raises(LwmError, match="sliding_window=4096"):
        model_config_from_hf(config)


# --- RoPE frequencies against transformers' own functions -----------------------------------


@pytest.mark.parametrize(
    "params",
    [
        YARN,
        dict(factor=8.0, original_max_position_embeddings=64, beta_fast=16, beta_slow=2),
        dict(YARN, truncate=False, mscale=0.707, mscale_all_dim=1.0),
        dict(factor=2.5, original_max_position_embeddings=16, attention_factor=1.3),
        dict(factor=2.0),  # original_max_position_embeddings: the model's max positions
    ],
)
def test_yarn_frequencies_and_attention_factor_match_transformers(params):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lwm.layers.rope_scaling import (
        rope_attention_factor,
        rope_scaling_from_hf,
        scaled_inv_freq,
    )

    theta = 5e5
    hf = LlamaConfig(
        hidden_size=80,
        num_attention_heads=5,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "yarn", "rope_theta": theta, **params},
    )
    want, want_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    scaling = rope_scaling_from_hf({"rope_type": "yarn", **params}, max_position_embeddings=64)
    np.testing.assert_allclose(np.asarray(scaled_inv_freq(16, theta, scaling)), want, rtol=1e-6)
    assert rope_attention_factor(scaling) == pytest.approx(want_factor, rel=1e-12)


# --- training stages change the RoPE --------------------------------------------------------


def test_a_stage_sets_theta_and_yarn_like_transformers(tiny_llama_dir, tmp_path, tokens):
    """A context-extension stage (theta 5e5 plus YaRN x4 over 16 positions) trains the model with
    exactly transformers' RoPE for those settings; a stage that sets nothing keeps the model's
    plain RoPE; LWM's own recipes stay plain."""
    from flax import nnx

    from lwm.config import load_config
    from lwm.models.io import get_params, set_params
    from lwm.models.transformer import Transformer
    from lwm.training.config import stage_section
    from lwm.training.run_spec import parse_run
    from lwm.training.stages import stage_model_config

    ckpt = tmp_path / "ckpt"
    assert main(["convert", "from-hf", str(tiny_llama_dir), str(ckpt)]) == 0
    base = lwm.load_model(ckpt)
    config = load_config("train_debug")
    config.model = base.config.to_dict()
    yarn = dict(rope_type="yarn", **YARN)
    config.stages = [
        stage_section(seq_len=32, batch_tokens=64, steps=1),
        stage_section(seq_len=32, batch_tokens=64, steps=1, rope_theta=5e5, rope_scaling=yarn),
        stage_section(seq_len=32, batch_tokens=64, steps=1, rope_scaling={"rope_type": "default"}),
    ]
    spec = parse_run(config, 1)
    cfgs = [stage_model_config(spec.model, st) for st in spec.stages]
    assert cfgs[0].rope_scaling is None and cfgs[0].rope_theta == 5e4
    assert cfgs[1].rope_scaling.kind == "yarn" and cfgs[1].rope_theta == 5e5
    assert cfgs[2].rope_scaling is None and cfgs[2].rope_theta == 5e4

    def logits(cfg):
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        set_params(model, get_params(base))
        return np.asarray(model(jnp.asarray(tokens)).logits)

    plain, extended = logits(cfgs[0]), logits(cfgs[1])
    assert np.max(np.abs(extended - plain)) > 1e-3
    hf_yarn = tmp_path / "hf_yarn"
    shutil.copytree(tiny_llama_dir, hf_yarn)
    hf_config = json.loads((hf_yarn / "config.json").read_text())
    hf_config["rope_parameters"] = {"rope_theta": 5e5, **yarn}
    (hf_yarn / "config.json").write_text(json.dumps(hf_config))
    np.testing.assert_allclose(extended, _hf_logits(_load_hf(hf_yarn), tokens), atol=1e-4)

    text = parse_run(load_config("lwm_text_1m"), 256)
    assert all(st.rope_scaling is None for st in text.stages)


@pytest.mark.parametrize(
    "stage, expect",
    [
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type='dynamic'"),
        ({"rope_scaling": {"rope_type": "yarn", "rope_theta": 1e6}}, "stages[0].rope_theta"),
        (
            {"rope_scaling": {"rope_type": "yarn"}},
            "stages[0].rope_scaling: yarn RoPE scaling needs factor",
        ),
    ],
)
def test_bad_stage_rope_scaling_is_one_line(stage, expect):
    from lwm.errors import ConfigError
    from lwm.training.config import TrainConfig, resolve_stages

    with pytest.raises(ConfigError) as e:
        resolve_stages(TrainConfig(), [stage], 1e4, 4096)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_another_kinds_settings_are_ignored_as_transformers_does():
    """Llama-3-era files may carry keys their RoPE type never reads; transformers ignores them."""
    from lwm.layers.rope_scaling import RopeScaling, rope_scaling_from_hf

    d = {"type": "linear", "factor": 2.0, "original_max_position_embeddings": 8, "beta_fast": 3}
    got = rope_scaling_from_hf(d, max_position_embeddings=64)
    assert got == RopeScaling(kind="linear", factor=2.0, original_max_position_embeddings=64)
    assert rope_scaling_from_hf({"rope_type": "default"}, max_position_embeddings=64) is None
