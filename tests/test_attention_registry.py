"""The attention registry: a backend registered in its own module is what `make_attention` builds
and what the model runs; unknown names are one-line ConfigErrors naming the known backends."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from lwm.attention import AttentionOp, backend_names, make_attention, register_backend
from lwm.attention.config import AttentionConfig
from lwm.config import parse_section
from lwm.errors import ConfigError
from lwm.models.config import ModelConfig
from lwm.models.transformer import init_model


@register_backend("test_reversed_dense")
@dataclasses.dataclass(frozen=True)
class ReversedDenseOp(AttentionOp):
    """Dense attention on rows stored in reverse order (its own layout, as `ring`'s zigzag is)."""

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None):
        seg = None if segment_ids_bt is None else self.from_layout(segment_ids_bt)
        natural = (self.from_layout(x) for x in (q_btnh, k_btkh, v_btkh))
        return self.to_layout(super().__call__(*natural, seg))

    def to_layout(self, x, axis: int = 1):
        return jnp.flip(x, axis)

    def from_layout(self, x, axis: int = 1):
        return jnp.flip(x, axis)


SMALL = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, rope_theta=1e5,
)  # fmt: skip


def test_registered_backend_is_built_and_runs_in_the_model():
    cfg = AttentionConfig(backend="test_reversed_dense")
    op = make_attention(cfg, causal=False)
    assert type(op) is ReversedDenseOp and op.config is cfg and not op.causal
    assert backend_names()[:3] == ("dense", "blockwise", "ring")
    assert "test_reversed_dense" in backend_names()
    # a config file names it like a built-in one
    parsed = parse_section(AttentionConfig, {"backend": "test_reversed_dense"}, "model.attention")
    assert parsed.backend == "test_reversed_dense"

    dense_cfg = ModelConfig(**SMALL)
    dense = init_model(dense_cfg, seed=0)
    mine = init_model(dense_cfg.replace(attention=dict(backend="test_reversed_dense")), seed=0)
    assert type(mine.attention_op) is ReversedDenseOp
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 97, (2, 16)), jnp.int32)
    segments = jnp.asarray(np.stack([np.repeat([1, 2], [9, 7]), np.repeat([3, 0], [12, 4])]))
    want = dense(tokens, segment_ids_bt=segments).logits
    got = mine(tokens, segment_ids_bt=segments).logits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_one_line_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError) as err:
        make_attention(AttentionConfig(backend="rign"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown attention backend 'rign'; expected one of dense, blockwise,")


def test_a_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="'dense' is already registered"):
        register_backend("dense")(ReversedDenseOp)
    assert make_attention(AttentionConfig()).__class__ is AttentionOp


def test_unknown_backend_fails_where_the_config_is_read():
    """A typo in a config file fails when the `model` section is parsed, before any mesh, data or
    compile work, with the same message the fixed list of names gave."""
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"attention": {"backend": "rign"}})
    assert str(err.value) == "model.attention.backend 'rign': expected one of " + ", ".join(
        backend_names()
    )
    assert {"dense", "blockwise", "ring"} <= set(backend_names())
