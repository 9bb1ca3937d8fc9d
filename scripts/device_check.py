"""Accelerator check: kernel parity, attention speed vs cuDNN, 1b train-step MFU, decode speed.

    scripts/device_check.sh [--out DIR]        # one GPU/TPU, under 8 minutes, JSON lines
    scripts/device_check.sh --cpu-dry-run      # the same phases end to end on CPU, tiny shapes

Phases (each guarded: an exception, OOM or compile failure in one measurement becomes a JSON line
with `error`, and the rest continues; each phase has a time budget and skips what would not fit):
  parity     the Pallas kernels vs dense attention on the device, forward and dq/dk/dv, fp32 and
             bf16, over causal / block-causal / packed / GQA / MQA (max abs errors)
  attention  causal fwd+bwd at T = 8K, 32K, 128K (B 1, 32 heads, 8 kv heads, head dim 128, bf16):
             pallas (2-3 tile configs), xla blockwise, jax.nn.dot_product_attention cuDNN; median
             seconds after warm-up, TFLOP/s with causal FLOPs (fwd 2*B*N*T^2*H, bwd 2.5x fwd),
             % of the device's bf16 peak, and the ratio to cuDNN
  train      one train step of the `1b` preset at 32K tokens (bf16 compute, scan, full remat):
             tokens/s and MFU
  decode     decode tokens/s of the `1b` preset with 32K and 128K tokens in the KV cache
  sp         (only with --phases sp) ring vs ulysses vs hybrid fwd+bwd at 128K over all devices
             as `sp`: scripts/device_phase_sp.py
  kvdtype    (only with --phases kvdtype) decode tokens/s of `1b` at 32K / 128K with bf16 vs int8
             vs fp8 KV caches: scripts/device_phase_kv.py

Records go to stdout and to DIR/device_check.jsonl (rewritten after every record, so a killed run
keeps what it measured). DIR: --out, else $OUT, else ./device_check_out.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
import traceback

# bf16 dense-matmul peak per device kind (TFLOP/s). H100/H200: the figure the goals of issue 17
# are stated against; override with --peak-tflops.
PEAK_BF16_TFLOPS = {
    "H200": 790.0,
    "H100": 790.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6": 918.0,
}
# Seconds per phase (compiles included); the wrapper caps the whole run at 470 s.
BUDGET_S = {"parity": 40.0, "attention": 190.0, "train": 110.0, "decode": 70.0, "sp": 150.0}
BUDGET_S["kvdtype"] = 150.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", default=None, help="output directory (default $OUT or ./device_check_out)"
    )
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on CPU (interpret mode)")
    p.add_argument("--phases", default="parity,attention,train,decode")
    p.add_argument("--lengths", default=None, help="attention lengths, e.g. 8192,32768,131072")
    p.add_argument(
        "--tiles",
        default=None,
        help="Pallas tile configs to time instead of the defaults: 'bq,bk,bq_bwd,bk_bwd,warps,"
        "stages' separated by ';', e.g. '128,64,64,64,8,3;128,128,64,128,8,2'",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak per device")
    p.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every phase's time budget"
    )
    return p.parse_args(argv)


class Recorder:
    """Collects records; prints each and rewrites the JSONL file atomically."""

    def __init__(self, out_dir: pathlib.Path, common: dict):
        self.path = out_dir / "device_check.jsonl"
        self.records: list[dict] = []
        self.common = common

    def emit(self, record: dict) -> None:
        import json

        from lwm.io import jsonable, write_jsonl

        rec = jsonable({**record, **self.common})
        self.records.append(rec)
        print(json.dumps(rec), flush=True)
        write_jsonl(self.path, self.records)


class Phase:
    """A time budget; `guard` runs one measurement and turns a failure into an error record."""

    def __init__(self, name: str, budget_s: float, rec: Recorder):
        self.name, self.budget_s, self.rec, self.t0 = name, budget_s, rec, time.perf_counter()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def guard(self, what: dict, fn) -> dict | None:
        if self.left() <= 0:
            self.rec.emit({"phase": self.name, **what, "skipped": "phase time budget spent"})
            return None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - one failed measurement must not stop the check
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            frames = traceback.extract_tb(e.__traceback__)[-3:]
            tail = [f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]
            self.rec.emit({"phase": self.name, **what, "error": msg, "where": tail})
            _free()
            return None
        if result is not None:
            self.rec.emit({"phase": self.name, **what, **result})
        return result


def _free() -> None:
    import gc

    import jax

    gc.collect()
    jax.clear_caches()


def time_fn(fn, args, *, iters: int, budget_s: float) -> dict:
    """Compile + first call, then up to `iters` timed calls within `budget_s`: median seconds."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    while len(times) < iters and (not times or sum(times) + first < budget_s):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "runs": len(times), "first_call_s": first}


# ----------------------------------------------------------------------------- parity


def run_parity(ph: Phase, dry: bool) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm.attention.dense import dense_attention
    from lwm.attention.pallas.ops import flash_attention

    t, h = (64, 32) if dry else (1024, 128)
    cases = {  # causal, causal_block_size, packed, heads, kv_heads
        "causal-packed-gqa": (True, None, True, 8, 2),
        "blockcausal-mqa": (True, 16 if dry else 256, False, 8, 1),
        "noncausal-packed-mha": (False, None, True, 4, 4),
    }
    if dry:
        cases = dict(list(cases.items())[:1])
    tol = {"float32": 1e-5 if dry else 1e-4, "bfloat16": 5e-2}
    for dtype in ("float32", "bfloat16"):
        for name, (causal, cbs, packed, n, kh) in cases.items():

            def one(causal=causal, cbs=cbs, packed=packed, n=n, kh=kh, dtype=dtype):
                ks = jax.random.split(jax.random.key(0), 4)
                q = jax.random.normal(ks[0], (1, t, n, h), jnp.float32).astype(dtype)
                k = jax.random.normal(ks[1], (1, t, kh, h), jnp.float32).astype(dtype)
                v = jax.random.normal(ks[2], (1, t, kh, h), jnp.float32).astype(dtype)
                do = jax.random.normal(ks[3], (1, t, n, h), jnp.float32).astype(dtype)
                seg = None
                if packed:
                    cuts = np.sort(np.random.default_rng(0).choice(t, 3, replace=False))
                    seg = jnp.asarray(np.searchsorted(cuts, np.arange(t), side="right")[None])

                def kernel(q, k, v):
                    return flash_attention(q, k, v, seg, causal=causal, causal_block_size=cbs)

                def dense(q, k, v):
                    return dense_attention(
                        q, k, v, segment_ids_bt=seg, causal=causal, causal_block_size=cbs
                    )

                def fwd_bwd(f, *xs):
                    out, vjp = jax.vjp(f, *xs)
                    return (out, *vjp(do.astype(out.dtype)))

                got = jax.jit(lambda *xs: fwd_bwd(kernel, *xs))(q, k, v)
                f32 = [x.astype(jnp.float32) for x in (q, k, v)]
                with jax.default_matmul_precision("highest"):  # no TF32 in the reference
                    want = jax.jit(lambda *xs: fwd_bwd(dense, *xs))(*f32)
                errs = [
                    float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
                    for a, b in zip(got, want)
                ]
                res = dict(zip(("out_err", "dq_err", "dk_err", "dv_err"), errs))
                return {**res, "tol": tol[dtype], "ok": max(errs) <= tol[dtype]}

            ph.guard({"name": name, "dtype": dtype, "seq_len": t, "head_dim": h}, one)


# ----------------------------------------------------------------------------- attention speed


def attention_flops(b: int, n: int, t: int, h: int, *, backward: bool) -> float:
    """Causal FLOPs: forward 2 matmuls x 2 x B x N x T^2 x H / 2; backward 2.5x the forward."""
    fwd = 2.0 * b * n * t * t * h
    return fwd * (3.5 if backward else 1.0)


def tile_configs(dry: bool, tiles: str | None = None):
    from lwm.attention.pallas.kernels import BlockSizes, platform

    if tiles:
        out = {}
        for item in tiles.split(";"):
            nums = [int(x) for x in item.split(",")]
            if len(nums) != 6:
                raise SystemExit(f"--tiles entry {item!r}: expected 6 integers")
            out["x".join(map(str, nums))] = BlockSizes(*nums)
        return out
    if dry:
        return {"cpu-64x64": BlockSizes(64, 64, 64, 64, 0, 0)}
    if platform() == "tpu":
        return {
            "tpu-512x512": BlockSizes(512, 512, 256, 256, 0, 0),
            "tpu-1024x512": BlockSizes(1024, 512, 512, 512, 0, 0),
        }
    return {  # Hopper, head_dim 128: (fwd q x k, bwd q x k, warps, stages)
        "gpu-128x64-w8s3": BlockSizes(128, 64, 64, 64, 8, 3),
        "gpu-128x128-w8s2": BlockSizes(128, 128, 64, 128, 8, 2),
        "gpu-64x64-w4s3": BlockSizes(64, 64, 32, 64, 4, 3),
    }


def run_attention(
    ph: Phase, dry: bool, lengths: list[int], peak: float | None, tiles: str | None = None
) -> None:
    import jax
    import jax.numpy as jnp

    from lwm.attention.blockwise import blockwise_attention
    from lwm.attention.pallas.kernels import platform
    from lwm.attention.pallas.ops import flash_attention

    b, n, kh, h = (1, 4, 2, 32) if dry else (1, 32, 8, 128)
    chunk = 64 if dry else 1024

    def pallas(blocks):
        return lambda q, k, v: flash_attention(q, k, v, blocks=blocks)

    impls = {f"pallas[{name}]": pallas(blocks) for name, blocks in tile_configs(dry, tiles).items()}
    impls["xla-blockwise"] = lambda q, k, v: blockwise_attention(
        q, k, v, query_chunk_size=chunk, key_chunk_size=chunk
    )
    impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn"
    )
    last: dict[str, tuple[int, float]] = {}
    for t in lengths:
        ks = jax.random.split(jax.random.key(0), 4)
        shape_q, shape_kv = (b, t, n, h), (b, t, kh, h)
        q = jax.random.normal(ks[0], shape_q, jnp.bfloat16)
        k = jax.random.normal(ks[1], shape_kv, jnp.bfloat16)
        v = jax.random.normal(ks[2], shape_kv, jnp.bfloat16)
        do = jax.random.normal(ks[3], shape_q, jnp.bfloat16)
        cudnn_s = None
        for name in sorted(impls, key=lambda s: s != "cudnn"):  # cuDNN first: the reference
            f = impls[name]
            what = {"name": name, "seq_len": t, "heads": n, "kv_heads": kh, "head_dim": h}
            if name == "cudnn" and platform() != "gpu":
                ph.rec.emit({"phase": ph.name, **what, "skipped": "cuDNN needs a GPU"})
                continue
            if name in last:  # skip what the last length says will not fit the budget
                t0, s0 = last[name]
                est = s0 * (t / t0) ** 2 * 4
                if est > ph.left():
                    ph.rec.emit({"phase": ph.name, **what, "skipped": f"estimated {est:.0f} s"})
                    continue

            def one(f=f, t=t, name=name, xs=(q, k, v, do)):
                def fwd_bwd(*args):  # (q, k, v, dout) -> (dq, dk, dv), forward included
                    _, vjp = jax.vjp(f, *args[:3])
                    return vjp(args[3])

                fb = time_fn(jax.jit(fwd_bwd), xs, iters=5, budget_s=ph.left() / 2)
                fw = time_fn(jax.jit(f), xs[:3], iters=5, budget_s=ph.left() / 4)
                flops_fb = attention_flops(b, n, t, h, backward=True)
                flops_f = attention_flops(b, n, t, h, backward=False)
                res = {
                    "fwd_bwd_s": fb["seconds"],
                    "fwd_s": fw["seconds"],
                    "fwd_bwd_tflops": flops_fb / fb["seconds"] / 1e12,
                    "fwd_tflops": flops_f / fw["seconds"] / 1e12,
                    "runs": fb["runs"],
                    "first_call_s": fb["first_call_s"],
                }
                if peak:
                    res["fwd_bwd_pct_peak"] = 100 * res["fwd_bwd_tflops"] / peak
                last[name] = (t, fb["seconds"] + fw["seconds"])
                return res

            res = ph.guard(what, one)
            if name == "cudnn" and res:
                cudnn_s = res["fwd_bwd_s"]
            if res and cudnn_s and name != "cudnn":
                ph.rec.emit(
                    {
                        "phase": ph.name,
                        "name": name,
                        "seq_len": t,
                        "speed_vs_cudnn": cudnn_s / res["fwd_bwd_s"],
                        "goal": ">= 0.8 at 32K and >= 40% of peak",
                    }
                )
        q = k = v = do = None  # free this length's inputs before the next
        _free()


# ----------------------------------------------------------------------------- train step


def model_config(preset: str, seq_len: int, *, train: bool, kernel: str = "auto"):
    from lwm.models.config import ModelConfig
    from lwm.models.presets import model_preset

    d = model_preset(preset)
    d.update(
        dtype="bfloat16",
        param_dtype="float32" if train else "bfloat16",
        max_sequence_length=max(seq_len, d.get("max_sequence_length", 0)),
        scan_layers=train,
        remat_policy="full" if train else "none",
    )
    chunk = min(1024, seq_len)
    d["attention"] = dict(
        backend="blockwise", kernel=kernel, query_chunk_size=chunk, key_chunk_size=chunk
    )
    return ModelConfig.from_dict(d)


def run_train(ph: Phase, dry: bool, peak: float | None) -> None:
    import jax
    import numpy as np

    from lwm.sharding import make_mesh
    from lwm.training import flops as flops_lib
    from lwm.training.optimizer import make_optimizer, weight_decay_mask
    from lwm.training.schedule import make_schedule
    from lwm.training.synthetic_data import synthetic_batch
    from lwm.training.train_state import count_params, init_params, model_def, rng_data
    from lwm.training.train_step import (
        batch_shardings,
        jit_train_step,
        make_train_step,
        state_shardings,
    )

    preset, t = ("debug", 128) if dry else ("1b", 32768)

    def one():
        # The dry run forces the (interpreted) kernels: scan + remat + Pallas, as on a device.
        cfg = model_config(preset, t, train=True, kernel="pallas" if dry else "auto")
        mesh = make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, jax.devices()[:1])
        mdef = model_def(cfg, mesh)
        opt = make_optimizer(
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            decay_mask=weight_decay_mask(mdef.abstract_pure_params()),
            clip_norm=1.0,
        )
        st_sh = state_shardings(mdef, opt, mesh)
        params = init_params(mdef, 0, mesh)
        state = {
            "step": jax.numpy.asarray(0, jax.numpy.int32),
            "params": params,
            "opt_state": jax.jit(opt.init, out_shardings=st_sh["opt_state"])(params),
            "rng": rng_data(0),
        }
        state = jax.device_put(state, st_sh)
        b_sh = batch_shardings(mesh, 1, t)
        host = synthetic_batch(0, seed=0, batch_size=1, seq_len=t, vocab_size=cfg.vocab_size)
        batch = {k: jax.device_put(v, b_sh[k]) for k, v in host.items()}
        fn = make_train_step(
            mdef, opt, make_schedule("constant", lr=1e-4, steps=10), text_weight=1.0,
            vision_weight=0.0,
        )  # fmt: skip
        step = jit_train_step(fn, st_sh, b_sh, mesh)
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        first = time.perf_counter() - t0
        times = []
        for _ in range(3):
            if times and sum(times) > ph.left() / 2:
                break
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        step_s = float(np.median(times))
        tps = t / step_s
        fpt = flops_lib.train_flops_per_token(cfg, t)
        if peak is None:  # CPU dry run: the measured fp32 matmul rate of this host
            peak_flops = flops_lib.measure_matmul_peak(None, n=256)
        else:
            peak_flops = peak * 1e12
        return {
            "tokens_per_s": tps,
            "step_s": step_s,
            "runs": len(times),
            "first_step_s": first,
            "mfu": flops_lib.mfu(tps, fpt, peak_flops),
            "model_flops_per_token": fpt,
            "params": count_params(state["params"]),
            "loss": float(metrics["loss"]),
            "goal": "mfu >= 0.40",
        }

    ph.guard({"name": f"train-step-{preset}", "seq_len": t, "dtype": "bfloat16/fp32"}, one)
    _free()


# ----------------------------------------------------------------------------- decode


def run_decode(ph: Phase, dry: bool) -> None:
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lwm.cache.kv_cache import init_cache
    from lwm.inference.sampler import Sampler
    from lwm.models.transformer import Transformer

    preset, contexts, steps = ("debug", [128], 4) if dry else ("1b", [32768, 131072], 64)
    cfg = model_config(preset, max(contexts) + 2 * steps, train=False)
    holder = {}

    def build():
        holder["model"] = Transformer(cfg, rngs=nnx.Rngs(0))
        return None

    ph.guard({"name": f"decode-{preset}-init"}, build)
    if "model" not in holder:
        return
    for ctx in contexts:

        def one(ctx=ctx):
            capacity = ctx + 2 * steps + 256
            sampler = Sampler(holder["model"], max_cache_len=capacity)

            def filled_cache():  # holds `ctx` tokens: decode cost depends on length, not values
                cache = init_cache(cfg, 1, capacity, None)
                valid = jnp.zeros((1, capacity), jnp.int32).at[:, :ctx].set(1)
                pos = jnp.full((1,), ctx, jnp.int32)
                return dataclasses.replace(cache, valid=valid, next_pos=pos)

            hidden = jnp.zeros((1, cfg.hidden_size), jnp.bfloat16)
            t0 = time.perf_counter()
            sampler.decode(filled_cache(), ctx, hidden, steps)  # compile (same shapes; donated)
            first = time.perf_counter() - t0
            cache = filled_cache()
            jax.block_until_ready(cache)
            t0 = time.perf_counter()
            gen = sampler.decode(cache, ctx, hidden, steps)
            jax.block_until_ready(gen.tokens)
            dt = time.perf_counter() - t0
            return {"tokens_per_s": steps / dt, "steps": steps, "first_call_s": first}

        ph.guard({"name": f"decode-{preset}", "context": ctx, "batch": 1}, one)
    _free()


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import jax

    from lwm.attention.pallas.kernels import platform

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    peak = args.peak_tflops
    if peak is None and not args.cpu_dry_run:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in kind.lower()), None)
    out = pathlib.Path(args.out or os.environ.get("OUT") or "device_check_out")
    out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(out, {"device_kind": kind})
    rec.emit(
        {
            "phase": "header",
            "platform": platform(),
            "devices": jax.device_count(),
            "jax": jax.__version__,
            "peak_bf16_tflops": peak,
            "dry_run": args.cpu_dry_run,
        }
    )
    if platform() == "cpu" and not args.cpu_dry_run:
        rec.emit({"phase": "header", "error": "no accelerator; use --cpu-dry-run on CPU"})
        return 2
    lengths = [256] if args.cpu_dry_run else [8192, 32768, 131072]
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",")]
    t_start = time.perf_counter()
    for name in args.phases.split(","):
        ph = Phase(name, BUDGET_S.get(name, 60.0) * args.budget_scale, rec)
        if name == "parity":
            run_parity(ph, args.cpu_dry_run)
        elif name == "attention":
            run_attention(ph, args.cpu_dry_run, lengths, peak, args.tiles)
        elif name == "train":
            run_train(ph, args.cpu_dry_run, peak)
        elif name == "decode":
            run_decode(ph, args.cpu_dry_run)
        elif name == "sp":  # opt-in (--phases sp): scripts/device_phase_sp.py
            from device_phase_sp import run_sp

            run_sp(ph, args.cpu_dry_run)
        elif name == "kvdtype":  # opt-in (--phases kvdtype): scripts/device_phase_kv.py
            from device_phase_kv import run_kvdtype

            run_kvdtype(ph, args.cpu_dry_run, model_config)
        else:
            rec.emit({"phase": name, "error": "unknown phase"})
    rec.emit({"phase": "done", "total_s": time.perf_counter() - t_start, "file": str(rec.path)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
