"""Checkpointer: round trip, keep-K, preserved steps, cadence, resharding onto another mesh,
partial restore."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lwm.checkpoint import Checkpointer, CheckpointError, abstract_like, read_checkpoint_metadata
from lwm.errors import LwmError
from lwm.sharding import make_mesh


def _state(mesh):
    w = jnp.arange(128, dtype=jnp.float32).reshape(16, 8) / 7.0
    return {
        "params": {
            "w": jax.device_put(w, NamedSharding(mesh, P(("fsdp", "sp"), "tp"))),
            "norm": jnp.linspace(0.0, 1.0, 8, dtype=jnp.float32),
        },
        "opt_state": {"mu": jnp.full((16, 8), 0.5, jnp.float32), "count": jnp.array(7, jnp.int32)},
        "rng": jnp.array([1, 2], jnp.uint32),
    }


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keep_and_cadence(tmp_path):
    mesh = make_mesh({"dp": 1, "fsdp": 2, "tp": 2, "sp": 2})
    state = _state(mesh)
    ckpt = Checkpointer(tmp_path / "ck", keep=2, save_every=2, async_save=True)
    assert ckpt.latest_step() is None
    assert not ckpt.save(1, state, metadata={"step": 1})  # off cadence
    assert ckpt.save(2, state, metadata={"step": 2}, data_state={"pos": 2})
    assert ckpt.save(3, state, metadata={"step": 3}, force=True)  # forced off cadence
    assert ckpt.save(4, state, metadata={"step": 4, "stage": 1}, data_state={"pos": 4})
    assert not ckpt.save(4, state, metadata={"step": 99}, force=True)  # never overwrites
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]  # keep=2 pruned step 2
    assert ckpt.latest_step() == 4

    restored, meta, data = ckpt.restore()
    assert meta == {"step": 4, "stage": 1} and data == {"pos": 4}
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))
    _assert_tree_equal(restored, state)
    _, meta3, data3 = ckpt.restore(3)
    assert meta3 == {"step": 3} and data3 is None
    assert ckpt.metadata(3) == {"step": 3}
    ckpt.close()

    # Metadata is plain JSON on disk (no pickle), readable without the arrays.
    assert read_checkpoint_metadata(tmp_path / "ck") == {"step": 4, "stage": 1}
    assert read_checkpoint_metadata(tmp_path / "nothing") is None
    files = [p for p in (tmp_path / "ck" / "4").rglob("*") if p.is_file()]
    assert not any(p.suffix in (".pkl", ".pickle") for p in files)
    meta_files = [p for p in files if "metadata" in p.parts and p.name == "metadata"]
    assert meta_files and json.loads(meta_files[0].read_text()) == {"step": 4, "stage": 1}


def test_preserved_steps_survive_keep(tmp_path):
    """Stage ends are kept whatever `keep` says (later stages and ablations start from them)."""
    state = {"w": np.arange(4, dtype=np.float32)}
    with Checkpointer(tmp_path, keep=2, async_save=True, preserve_steps=[2]) as ckpt:
        for step in (1, 2, 3, 4, 5):
            ckpt.save(step, state, metadata={"step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]
    with Checkpointer(tmp_path, keep=2, preserve_steps=[2]) as ckpt:  # a restart keeps it too
        ckpt.save(6, state, metadata={"step": 6})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 5, 6]
        np.testing.assert_array_equal(ckpt.restore(2)[0]["w"], state["w"])


def test_restore_onto_other_mesh_and_subtree(tmp_path):
    mesh_a = make_mesh({"dp": 1, "fsdp": 2, "tp": 2, "sp": 2})
    mesh_b = make_mesh({"dp": 2, "fsdp": 1, "tp": 1, "sp": 4})
    state = _state(mesh_a)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state, metadata={"ok": True})

        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=NamedSharding(mesh_b, P("sp") if x.ndim == 2 else P())
            ),
            state,
        )
        restored, _, _ = ckpt.restore(abstract_state=target)
        w = restored["params"]["w"]
        assert isinstance(w, jax.Array) and w.sharding == target["params"]["w"].sharding
        assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (4, 8)
        _assert_tree_equal(restored, state)

        # Only the params, onto a fresh sharding, and as host arrays.
        params, meta, _ = ckpt.restore(subtree="params", abstract_state=target["params"])
        assert set(params) == {"w", "norm"} and meta == {"ok": True}
        _assert_tree_equal(params, state["params"])
        mu, _, _ = ckpt.restore(subtree=("opt_state", "mu"))
        np.testing.assert_array_equal(mu, np.asarray(state["opt_state"]["mu"]))

        # abstract_like keeps the shardings of live arrays.
        again, _, _ = ckpt.restore(abstract_state=abstract_like(state))
        assert again["params"]["w"].sharding == state["params"]["w"].sharding


def test_errors(tmp_path):
    mesh = make_mesh({"dp": 1, "fsdp": 2, "tp": 2, "sp": 2})
    state = _state(mesh)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint"):
            ckpt.restore()
        ckpt.save(1, state, metadata={})
        with pytest.raises(CheckpointError, match="step 5"):
            ckpt.restore(5)
        with pytest.raises(LwmError, match="no subtree 'ema'"):
            ckpt.restore(subtree="ema")
        wrong = abstract_like(state)
        wrong["params"]["w"] = jax.ShapeDtypeStruct((16, 4), jnp.float32)
        with pytest.raises(CheckpointError, match=r"shape \(16, 8\), expected \(16, 4\)"):
            ckpt.restore(abstract_state=wrong)
        extra = abstract_like(state)
        extra["params"]["new"] = jax.ShapeDtypeStruct((2,), jnp.float32)
        with pytest.raises(CheckpointError, match="different model"):
            ckpt.restore(abstract_state=extra)
