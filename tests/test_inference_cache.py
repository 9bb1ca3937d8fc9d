"""The compiled decode step updates the KV cache in place: the cache buffers are donated and
aliased to the outputs, each layer's buffer gets exactly one in-place update (one slot), and no
other instruction produces a cache-sized buffer (no copy of a layer cache, no slice of a stacked
cache, no duplicated update). Compiled-HLO checks, not timings: the old layout (a stacked
`[L, B, S, K, H]` cache sliced per layer) or an update ordered before the reads it races with
would add whole-layer copies and fail here."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model

from lwm.cache.kv_cache import (
    KVCache,
    bucket,
    cache_field,
    cache_specs,
    grow,
    init_cache,
    place,
    repeat_rows,
)
from lwm.inference.sampler import DecodeMode, Sampler
from lwm.inference.sampling import GREEDY
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer
from lwm.sharding import make_mesh

CFG = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    max_sequence_length=2048,
)
CAPACITY = 2048  # a layer cache (per device: 2 x 2048 / sp slots x 8) outsizes any other buffer

_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%(?P<name>\S+) = (?P<dtype>\w+)\[(?P<dims>[\d,]*)\]\S*\s+"
    r"(?P<op>[\w-]+)\((?P<args>[^)]*)\)"
)


def _entry_instructions(hlo: str) -> list[dict]:
    lines = hlo.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    out = []
    for line in lines[start + 1 :]:
        if line.startswith("}"):
            break
        m = _INSTR.match(line)
        if m:
            dims = [int(d) for d in m["dims"].split(",") if d]
            args = re.findall(r"%([\w.\-]+)", m["args"])
            out.append(dict(m.groupdict(), numel=int(np.prod(dims)) if dims else 1, ops=args))
    return out


def _aliased_params(hlo: str) -> set[int]:
    header = hlo.splitlines()[0]
    alias = re.search(r"input_output_alias=\{(.*?)\}, entry_computation_layout", header)
    assert alias, "the decode step aliases no input to an output (cache not donated)"
    return {int(p) for p in re.findall(r"\(\s*(\d+),", alias.group(1))}


def _check_in_place(compiled_hlo: str, layer_shape: tuple[int, ...], num_layers: int) -> None:
    """Every cache-sized buffer of the step's entry computation is a cache parameter (donated)
    or one in-place update of one (exactly one per layer for k and v); no copies, slices or
    duplicated updates."""
    layer_numel = int(np.prod(layer_shape))
    dims = ",".join(map(str, layer_shape))
    instrs = _entry_instructions(compiled_hlo)
    params = {i["name"]: i for i in instrs if i["op"] == "parameter"}
    cache_params = {n for n, i in params.items() if i["dims"] == dims}
    assert len(cache_params) == 2 * num_layers, sorted(cache_params)
    aliased = _aliased_params(compiled_hlo)
    for name in cache_params:
        index = int(re.search(r"parameter\((\d+)\)", _line(compiled_hlo, name)).group(1))
        assert index in aliased, f"cache buffer {name} is not donated/aliased to an output"
    updates, offenders = [], []
    for i in instrs:
        if i["numel"] < layer_numel or i["op"] in ("parameter", "bitcast"):
            continue
        if i["op"] in ("fusion", "dynamic-update-slice") and cache_params & set(i["ops"]):
            updates.append(i["name"])
        else:
            offenders.append(f"{i['op']} {i['name']} [{i['dims']}]")
    assert not offenders, f"cache-sized buffers besides the in-place updates: {offenders}"
    assert len(updates) == 2 * num_layers, updates


def _line(hlo: str, name: str) -> str:
    return next(line for line in hlo.splitlines() if re.match(rf"\s*%{re.escape(name)} = ", line))


def _step_hlo(sampler: Sampler, cache: KVCache) -> str:
    step = sampler.step_fn(DecodeMode(), GREEDY)
    b = cache.batch
    args = (
        sampler.state,
        cache,
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
        jnp.int32(5),
        np.int32(1),
        jax.random.key(0),
        jnp.full((4, b), -1, jnp.int32),
        jnp.ones((4,), jnp.float32),
    )
    return step.lower(*args).compile().as_text()


@pytest.mark.parametrize(
    "scan_layers, sp, kv",
    [
        (False, 1, None),
        (True, 1, None),
        (False, 8, None),
        (False, 1, "bfloat16"),
        (False, 8, "int8"),
    ],
    ids=["looped", "scanned", "sp8", "bf16", "bf16-int8-sp8"],
)
def test_decode_step_updates_cache_in_place(scan_layers, sp, kv):
    """On one device and with the slots sharded over sp (each device then updates its own
    shard in place: a one-slot masked write, not a select over the whole shard). A bf16 model
    (`kv`: its cache stored as bf16 bits, or 8-bit codes and bf16 scales): XLA:CPU converted a
    bf16 cache to f32 whole around the update before it was stored as bits."""
    extra = {} if kv is None else {"dtype": "bfloat16", "kv_dtype": kv}
    cfg = ModelConfig(**CFG, scan_layers=scan_layers, **extra)
    mesh = make_mesh({"sp": sp}) if sp > 1 else None
    ctor = lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh)  # noqa: E731
    model = random_model(ctor, seed=0)
    sampler = Sampler(model, max_cache_len=CAPACITY)
    cache = init_cache(cfg, 1, CAPACITY, mesh)
    _check_in_place(_step_hlo(sampler, cache), (1, 2, CAPACITY // sp, 8), cfg.num_layers)


def test_checker_flags_a_copied_cache():
    """The checker itself: a step that reads the updated cache through a stacked copy fails."""

    def bad(ks, new):
        stacked = jnp.stack(ks)  # the old layout: one [L, ...] buffer
        out = [jax.lax.dynamic_update_slice(k, new, (0, 0, 3, 0)) for k in ks]
        return out, (stacked[1] * 2.0).sum()

    ks = [jnp.zeros((1, 2, CAPACITY, 8)) for _ in range(2)]
    hlo = jax.jit(bad, donate_argnums=0).lower(ks, jnp.ones((1, 2, 1, 8))).compile().as_text()
    with pytest.raises(AssertionError):
        _check_in_place(hlo, (1, 2, CAPACITY, 8), 1)


def test_cache_layout_and_helpers():
    """One head-major buffer per layer, sharded like activations (slots over sp); `k`/`v` stack
    them slot-major; grow and repeat_rows keep every layer's content."""
    cfg = ModelConfig(**CFG)
    mesh = make_mesh({"sp": 8})
    cache = init_cache(cfg, 1, 64, mesh)
    assert len(cache.ks) == len(cache.vs) == cfg.num_layers
    assert cache.ks[0].shape == (1, 2, 64, 8) and cache.ks[0].sharding.spec[2] == "sp"
    rng = np.random.default_rng(0)
    ks = tuple(jnp.asarray(rng.standard_normal((1, 2, 64, 8)), jnp.float32) for _ in range(3))
    filled = KVCache(
        ks=ks,
        vs=tuple(2 * k for k in ks),
        valid=cache.valid.at[0, :10].set(1),
        next_pos=cache.next_pos,
    )
    assert filled.k.shape == (3, 1, 64, 2, 8)
    np.testing.assert_array_equal(np.asarray(filled.k)[1, 0, 5], np.asarray(ks[1])[0, :, 5])
    np.testing.assert_array_equal(np.asarray(filled.v), 2 * np.asarray(filled.k))
    big = repeat_rows(grow(filled, bucket(65, 32), mesh), 3, mesh)
    assert big.capacity == 96 and big.batch == 3
    assert big.ks[2].sharding.spec[2] == "sp"
    got = np.asarray(big.k)
    np.testing.assert_array_equal(got[:, :, :64], np.repeat(np.asarray(filled.k), 3, axis=1))
    assert not got[:, :, 64:].any() and int(np.asarray(big.valid)[:, 64:].sum()) == 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ScaledCache(KVCache):
    """A cache with one more field, declared once (as an int8 cache's per-slot scales would be)."""

    k_scales: tuple[jax.Array, ...] = cache_field(
        ("batch", "act_kv_heads", "length"), dtype="float32", layer="k_scale"
    )


def test_a_field_declared_once_flows_through_every_cache_op():
    """Creation, shardings, grow, repeat_rows and place handle a new field from its declaration
    alone: its slot axis is padded, its rows repeated, its slots sharded over sp."""
    cfg = ModelConfig(**CFG)
    mesh = make_mesh({"sp": 8})
    specs = cache_specs(cfg, 1, 64, mesh, cls=ScaledCache)
    assert [x.shape for x in specs.k_scales] == [(1, 2, 64)] * cfg.num_layers
    assert specs.k_scales[0].sharding.spec[2] == "sp"
    cache = init_cache(cfg, 1, 64, mesh, cls=ScaledCache)
    assert isinstance(cache, ScaledCache) and cache.k_scales[1].dtype == jnp.float32
    assert cache.k_scales[1].sharding.spec[2] == "sp"
    scales = tuple(jnp.full((1, 2, 64), i + 1.0) for i in range(cfg.num_layers))
    cache = dataclasses.replace(cache, k_scales=scales)
    big = repeat_rows(grow(cache, 96, mesh), 3, mesh)
    assert isinstance(big, ScaledCache) and big.capacity == 96 and big.batch == 3
    for i, x in enumerate(big.k_scales):
        assert x.shape == (3, 2, 96) and x.sharding.spec[2] == "sp"
        np.testing.assert_array_equal(np.asarray(x)[:, :, :64], i + 1.0)
        assert not np.asarray(x)[:, :, 64:].any()
    assert len(big.layer_arrays()) == 3 * cfg.num_layers  # keys, values and scales
    moved = place(jax.device_get(big), mesh)
    assert moved.k_scales[0].sharding.spec[2] == "sp"
