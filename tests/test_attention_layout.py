"""Sequence layouts: host permutations, device movement without gathering, round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lwm.attention.layout import (
    from_layout,
    inverse_permutation,
    layout_permutation,
    natural_positions,
    to_layout,
)
from lwm.errors import ConfigError
from lwm.sharding import make_mesh


def test_zigzag_and_striped_permutations():
    # 4 shards, 16 tokens: zigzag chunks of 2 -> shard i holds chunks i and 7 - i
    zig = layout_permutation("zigzag", 16, 4)
    np.testing.assert_array_equal(
        zig.reshape(4, 4), [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    )
    striped = layout_permutation("striped", 16, 4)
    np.testing.assert_array_equal(striped.reshape(4, 4), np.arange(16).reshape(4, 4).T)
    np.testing.assert_array_equal(layout_permutation("contiguous", 16, 4), np.arange(16))
    for perm in (zig, striped):
        assert sorted(perm) == list(range(16))
        np.testing.assert_array_equal(perm[inverse_permutation(perm)], np.arange(16))
    # the traced per-shard positions agree with the host permutation
    for shard in range(4):
        got = natural_positions("zigzag", jnp.int32(shard), 4, 4)
        np.testing.assert_array_equal(got, zig.reshape(4, 4)[shard])


def test_numpy_round_trip_and_errors():
    mesh = make_mesh(dict(sp=4), jax.devices()[:4])
    x = np.arange(2 * 32 * 3).reshape(2, 32, 3)
    for layout in ("zigzag", "striped"):
        y = to_layout(x, layout, mesh)
        assert isinstance(y, np.ndarray)
        np.testing.assert_array_equal(y, x[:, layout_permutation(layout, 32, 4)])
        np.testing.assert_array_equal(from_layout(y, layout, mesh), x)
    with pytest.raises(ConfigError, match="sequence length 12 is not divisible by 16"):
        to_layout(np.zeros((1, 12)), "striped", mesh)
    with pytest.raises(ConfigError, match="unknown attention layout"):
        to_layout(np.zeros((1, 16)), "spiral", mesh)


@pytest.mark.parametrize("layout", ["zigzag", "striped"])
def test_device_permutation_matches_host_without_gather(layout):
    mesh = make_mesh(dict(dp=2, sp=4))
    x = np.arange(2 * 32 * 3, dtype=np.float32).reshape(2, 32, 3)
    mask = (np.arange(2 * 32).reshape(2, 32) % 3) == 0
    sharding = NamedSharding(mesh, P("dp", "sp"))
    xs, ms = jax.device_put(x, sharding), jax.device_put(mask, sharding)
    fwd = jax.jit(lambda a, m: (to_layout(a, layout, mesh), to_layout(m, layout, mesh)))
    y, ym = fwd(xs, ms)
    np.testing.assert_array_equal(y, to_layout(x, layout, mesh))
    np.testing.assert_array_equal(ym, to_layout(mask, layout, mesh))
    assert ym.dtype == jnp.bool_
    back = jax.jit(lambda a: from_layout(a, layout, mesh))
    np.testing.assert_array_equal(back(y), x)
    # the sequence never lands whole on one device: point-to-point or all-to-all moves only
    for hlo in (fwd.lower(xs, ms).compile().as_text(), back.lower(y).compile().as_text()):
        assert "all-gather" not in hlo
        assert ("collective-permute" in hlo) or ("all-to-all" in hlo)
