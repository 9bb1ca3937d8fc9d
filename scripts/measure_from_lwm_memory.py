"""Peak host memory of `lwm convert from-lwm` on a synthetic LWM streaming checkpoint.

Writes a `--preset`-shaped (default `1b`, ~1.1B parameters) scanned bf16 file in LWM's format (with
the test suite's independent writer, tests/lwm_fixtures.py) under a temp dir, converts it in a child
process, and prints the child's peak RSS beside the input and output sizes. Everything is deleted
afterwards.

  python scripts/measure_from_lwm_memory.py [--preset 1b] [--param-dtype float32] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _records(cfg, dtype):
    rng = np.random.default_rng(0)
    d, n, k, h, f, v, L = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.num_layers,
    )
    shapes = {
        ("transformer", "wte", "embedding"): (v, d),
        ("transformer", "ln_f", "kernel"): (d,),
        ("lm_head", "kernel"): (d, v),
    }
    b = ("transformer", "h", "scan_decoder")
    shapes |= {
        b + ("attention", "wq", "kernel"): (L, d, n * h),
        b + ("attention", "wk", "kernel"): (L, d, k * h),
        b + ("attention", "wv", "kernel"): (L, d, k * h),
        b + ("attention", "wo", "kernel"): (L, n * h, d),
        b + ("feed_forward", "w1", "kernel"): (L, d, f),
        b + ("feed_forward", "w3", "kernel"): (L, d, f),
        b + ("feed_forward", "w2", "kernel"): (L, f, d),
        b + ("attention_norm", "kernel"): (L, d),
        b + ("ffn_norm", "kernel"): (L, d),
    }
    for key, shape in shapes.items():
        yield key, (rng.random(shape, dtype=np.float32) * 0.02).astype(dtype)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="1b")
    ap.add_argument("--param-dtype", default="float32")
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    args = ap.parse_args()

    import ml_dtypes
    from lwm_fixtures import write_stream

    from lwm.models.config import ModelConfig
    from lwm.models.presets import base_config

    cfg = ModelConfig.from_dict(base_config(args.preset).model)
    work = pathlib.Path(tempfile.mkdtemp(dir=args.tmp, prefix="from_lwm_mem_"))
    try:
        src = write_stream(work / "streaming_params", _records(cfg, ml_dtypes.bfloat16))
        child = (
            "import resource, sys; from lwm.cli.main import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
            "sys.exit(rc)"
        )
        cmd = [sys.executable, "-c", child, "convert", "from-lwm", f"params::{src}"]
        cmd += [str(work / "out"), "--config", args.preset, "--param-dtype", args.param_dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        peak = int(proc.stdout.split("PEAK_RSS_KB")[1].split()[0]) * 1024
        n_params = sum(int(np.prod(s)) for s in _shapes_only(cfg))
        out_bytes = n_params * np.dtype(args.param_dtype).itemsize
        on_disk = sum(p.stat().st_size for p in (work / "out").rglob("*") if p.is_file())
        largest = max(int(np.prod(s)) for s in _shapes_only(cfg)) * 4
        in_gib = src.stat().st_size / 2**30
        print(
            f"preset {args.preset}: {n_params / 1e9:.2f}B params; input {in_gib:.2f} GiB (bf16);"
            f" output {out_bytes / 2**30:.2f} GiB in memory ({args.param_dtype}), "
            f"{on_disk / 2**30:.2f} GiB on disk; largest tensor {largest / 2**30:.2f} GiB as fp32"
        )
        print(
            f"converter peak RSS {peak / 2**30:.2f} GiB = output x {peak / out_bytes:.2f} "
            f"(output + {(peak - out_bytes) / 2**30:.2f} GiB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _shapes_only(cfg):
    d, n, k, h, f, v, L = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.num_layers,
    )
    return [
        (v, d),
        (d,),
        (d, v),
        (L, d, n * h),
        (L, d, k * h),
        (L, d, k * h),
        (L, n * h, d),
        (L, d, f),
        (L, d, f),
        (L, f, d),
        (L, d),
        (L, d),
    ]


if __name__ == "__main__":
    sys.exit(main())
