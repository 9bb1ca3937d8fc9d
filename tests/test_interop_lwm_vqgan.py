"""LWM's VQGAN weights: restricted unpickler, LWM name mapping, `lwm convert vqgan-from-lwm`."""

import os
import pickle
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from lwm.cli.main import main
from lwm.config import load_config
from lwm.errors import LwmError
from lwm.interop import safe_pickle
from lwm.interop.lwm_vqgan import lwm_params_to_state
from lwm.video.config import VQGANConfig
from lwm.video.vqgan import VQGAN, init_vqgan, make_decode_fn, make_encode_fn
from lwm.video.vqgan_checkpoint import load_vqgan, state_tree
from tests.lwm_vqgan_fixtures import LinenLWMVQGAN, lwm_layout_from_state

# A smaller variant of LWM's architecture (decoder num_res_blocks + 1, mid stage of 2).
TINY = dict(
    name="vqgan_lwm_tiny",
    resolution=16,
    base_channels=8,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    decoder_res_blocks=2,
    mid_res_blocks=2,
    norm_groups=4,
    codebook_size=32,
    embed_dim=4,
)
OVERRIDES = [f"--config.vqgan.{k}={v}" for k, v in TINY.items()]


def _cfg():
    return VQGANConfig.from_dict({**load_config("vqgan_lwm").vqgan.to_dict(), **TINY})


def _frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


# -- the restricted unpickler ----------------------------------------------------------------


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _assert_refused(tmp_path, data, global_name):
    marker = tmp_path / "marker"
    f = tmp_path / "weights.pkl"
    f.write_bytes(data)
    with pytest.raises(LwmError, match=global_name.replace(".", r"\.")) as e:
        safe_pickle.load(f)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    rc = main(["convert", "vqgan-from-lwm", str(f), str(tmp_path / "out")])
    assert rc == 2 and not marker.exists() and not (tmp_path / "out").exists()


def test_os_system_payload_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    # As written by `pickle.dumps` (os.system pickles under its real module, posix/nt) ...
    data = pickle.dumps({"params": _Payload(os.system, f"touch {marker}")})
    _assert_refused(tmp_path, data, f"{os.system.__module__}.system")
    # ... and a hand-written protocol-0 stream naming os.system.
    raw = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    _assert_refused(tmp_path, raw, "os.system")
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all("refusing pickled global" in line for line in err)


def test_eval_and_subprocess_globals_are_refused(tmp_path):
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('x')"
    _assert_refused(tmp_path, pickle.dumps(_Payload(eval, code)), "builtins.eval")
    _assert_refused(
        tmp_path,
        pickle.dumps([np.zeros(2), _Payload(subprocess.check_call, ["touch", str(marker)])]),
        "subprocess.check_call",
    )
    # A global that is not callable-looking still is refused (nothing imported for it).
    _assert_refused(tmp_path, b"cos\nenviron\n.", "os.environ")


def test_numpy_and_jax_array_trees_load_exactly():
    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "i32": np.arange(7, dtype=np.int32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        "nested": {"scalar": np.float32(1.5), "list": [np.ones(2, np.uint8), 3]},
    }
    jtree = {"a": jnp.asarray(tree["f32"]), "b": jnp.asarray(tree["bf16"])}
    for proto in (2, 4, 5):
        got = safe_pickle.loads(pickle.dumps(tree, protocol=proto))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tree), strict=True):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # A jax array pickles via jax._src.array._reconstruct_array: rebuilt as numpy.
        got = safe_pickle.loads(pickle.dumps(jtree, protocol=proto))
        assert all(type(x) is np.ndarray for x in got.values())
        assert got["b"].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got["a"], tree["f32"])
        np.testing.assert_array_equal(got["b"], tree["bf16"])
    from flax.core import FrozenDict

    got = safe_pickle.loads(pickle.dumps(FrozenDict({"params": {"x": tree["i32"]}})))
    assert type(got) is dict and np.array_equal(got["params"]["x"], tree["i32"])


def test_object_arrays_and_garbage_are_refused():
    with pytest.raises(LwmError, match="dtype object"):
        safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(LwmError, match="not a readable pickle"):
        safe_pickle.loads(b"\x80\x04not a pickle")


# -- LWM's names onto lwm's VQGAN -------------------------------------------------------------


def test_lwm_preset_is_lwm_architecture():
    cfg = VQGANConfig.from_dict(load_config("vqgan_lwm").vqgan)
    assert (cfg.num_res_blocks, cfg.decoder_blocks, cfg.mid_blocks) == (2, 3, 2)
    model = nnx.eval_shape(lambda: VQGAN(cfg, rngs=nnx.Rngs(0)))
    st = state_tree(model)
    assert sorted(st["decoder"]["up"]["0"]["blocks"]) == ["0", "1", "2"]
    assert sorted(st["encoder"]["down"]["0"]["blocks"]) == ["0", "1"]
    # Parameter count of LWM's VQGAN (all of its params; lwm adds the usage EMA [8192]).
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(st)) - 8192
    model_l = LinenLWMVQGAN(128, (1, 2, 2, 4, 6), 2, 32, 64, 8192)
    shapes = jax.eval_shape(model_l.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
    assert n == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    lwm_params_to_state(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]), cfg)


@pytest.fixture(scope="module")
def linen_model():
    m = LinenLWMVQGAN(8, (1, 2, 2), 1, 4, 4, 32)
    shapes = jax.eval_shape(m.init, jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
    rng = np.random.default_rng(1)

    def fill(path, s):  # non-trivial biases and scales too, so each one's mapping matters
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(s.shape, np.float32) / np.sqrt(np.prod(s.shape[:-1]))
        if name == "scale":
            return 1 + 0.1 * rng.standard_normal(s.shape, np.float32)
        return (0.1 if name == "bias" else 1.0) * rng.standard_normal(s.shape, np.float32)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    params = jax.tree.map(jnp.asarray, params)  # jax arrays, as LWM's file holds
    return m, params


def test_linen_lwm_vqgan_weights_give_lwm_the_same_codes_and_pixels(tmp_path, linen_model):
    m, params = linen_model
    f = tmp_path / "vqgan"
    with open(f, "wb") as fh:
        pickle.dump(params, fh)
    assert main(["convert", "vqgan-from-lwm", str(f), str(tmp_path / "out"), *OVERRIDES]) == 0
    model = load_vqgan(tmp_path / "out", expect=_cfg())
    x = _frames()
    encode = jax.jit(lambda p, x: m.apply({"params": p}, x, method=m.encode))
    decode = jax.jit(lambda p, c: m.apply({"params": p}, c, method=m.decode))
    want_codes = np.asarray(encode(params, x))
    codes = np.asarray(model.encode(jnp.asarray(x)))
    np.testing.assert_array_equal(codes, want_codes)
    assert len(np.unique(codes)) > 3
    want_px = np.asarray(decode(params, jnp.asarray(codes)))
    np.testing.assert_allclose(np.asarray(model.decode(codes)), want_px, atol=1e-5, rtol=1e-5)


def test_lwm_layout_round_trips_to_identical_codes_and_pixels(tmp_path):
    cfg = _cfg()
    src = init_vqgan(cfg, seed=3)
    st = state_tree(src)
    st["quantizer"]["codebook"] = np.random.default_rng(4).standard_normal((32, 4), np.float32)
    from lwm.video.vqgan_checkpoint import load_state_tree

    load_state_tree(src, st)
    f = tmp_path / "vqgan.pkl"
    f.write_bytes(pickle.dumps(lwm_layout_from_state(st, 3)))
    assert main(["convert", "vqgan-from-lwm", str(f), str(tmp_path / "o"), *OVERRIDES]) == 0
    got = load_vqgan(tmp_path / "o")
    x = _frames(4, seed=5)
    codes = np.asarray(make_encode_fn(got)(x))
    np.testing.assert_array_equal(codes, np.asarray(make_encode_fn(src)(x)))
    np.testing.assert_array_equal(
        np.asarray(make_decode_fn(got)(codes)), np.asarray(make_decode_fn(src)(codes))
    )
    np.testing.assert_array_equal(
        np.asarray(got.decode(jnp.asarray(codes))), np.asarray(src.decode(jnp.asarray(codes)))
    )


def test_missing_extra_and_misshaped_keys_are_one_line_errors(tmp_path, capsys):
    cfg = _cfg()
    layout = lwm_layout_from_state(state_tree(init_vqgan(cfg)), 3)
    missing = jax.tree.map(lambda x: x, layout)
    del missing["decoder"]["UpsamplingBlock_0"]["ResnetBlock_1"]
    with pytest.raises(LwmError, match=r"8 parameter.*missing.*decoder\.up\.2\.blocks\.1"):
        lwm_params_to_state(missing, cfg)
    extra = jax.tree.map(lambda x: x, layout)
    extra["encoder"]["AttnBlock_0"] = {"Conv_0": {"kernel": np.zeros(1)}}
    with pytest.raises(LwmError, match="not in LWM's VQGAN layout.*encoder/AttnBlock_0"):
        lwm_params_to_state(extra, cfg)
    f = tmp_path / "w.pkl"
    f.write_bytes(pickle.dumps(layout))
    # The full-size preset does not match the tiny weights: a shape error, nothing written.
    assert main(["convert", "vqgan-from-lwm", str(f), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expects" in err and not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["convert", "vqgan-from-lwm", str(f), str(tmp_path / "full"), *OVERRIDES]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
