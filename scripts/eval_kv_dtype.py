"""Accuracy of the KV-cache dtypes on a real trained model: needle answers and perplexity.

For each `--kv-dtypes` (the first is the reference: `auto`, the checkpoint's compute dtype):
  - greedy needle answers at `--lengths` x `--depths` (lwm's needle eval prompts, the model's
    chat template when its tokenizer ships one): how many are token-identical to the
    reference's, and how many are correct;
  - perplexity of `--ppl-length` tokens of real text (Python's `pydoc_data` topics) read through
    the KV cache: prefilled `--prefill-chunk` tokens at a time into a cache of that dtype, every
    position scored, so each chunk reads the earlier chunks back from the (quantized) cache; the
    relative difference to the reference.
One JSON line per dtype, then a table. Example (SmolLM2-135M-Instruct, as the suite converts it):

  lwm convert from-gguf SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2
  python scripts/eval_kv_dtype.py --checkpoint /tmp/smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DTYPES = ("auto", "bfloat16", "int8", "float8_e4m3fn")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="lwm checkpoint (tokenizer inside)")
    p.add_argument("--kv-dtypes", nargs="+", default=list(DTYPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--ppl-length", type=int, default=4096)
    p.add_argument("--prefill-chunk", type=int, default=512)
    return p.parse_args(argv)


def needle_prompts(tokenizer, lengths, depths) -> list[tuple[list[int], tuple[str, ...]]]:
    """(prompt ids, expected numbers) per (length, depth), as `lwm needle` builds them."""
    from lwm.evals.needle import Job, NeedleSpec, build_prompt, load_haystack, make_task

    spec = NeedleSpec(template="chat" if tokenizer.chat_template else "default")
    haystack = load_haystack(spec.haystack)
    out = []
    for n in lengths:
        for d in depths:
            task = make_task(tokenizer, haystack, spec, Job(n, d, 0))
            out.append((build_prompt(tokenizer, task, spec.template), task.answers))
    return out


def cached_nll(model, tokens, chunk: int):
    """Mean NLL of tokens[1:] given the prefix, the model reading its context through a KV cache
    of its config's `kv_dtype`, `chunk` tokens per forward (each chunk attends to the earlier
    ones as stored in the cache)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from lwm.cache.slots import CacheSlots

    n = len(tokens) - 1
    ids = np.asarray(tokens[:n], np.int32)[None]
    targets = np.asarray(tokens[1 : n + 1], np.int32)[None]
    graphdef, state = nnx.split(model)
    width = -(-n // chunk) * chunk
    cache = model.init_cache(1, width)

    @jax.jit
    def step(state, cache, tok_bt, tgt_bt, pos_bt, valid_bt, start):
        m = nnx.merge(graphdef, state)
        slots = CacheSlots.for_chunk(cache.valid, valid_bt, start, mesh=m.mesh)
        hidden, cache = m.hidden_states(tok_bt, positions_bt=pos_bt, cache=cache, cache_slots=slots)
        logp = jax.nn.log_softmax(m.logits(hidden).astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, tgt_bt[..., None], axis=-1)[..., 0]
        return cache, jnp.sum(jnp.where(valid_bt > 0, nll, 0.0))

    total = 0.0
    for c in range(0, width, chunk):
        m = min(chunk, n - c)
        tok = np.zeros((1, chunk), np.int32)
        tgt = np.zeros((1, chunk), np.int32)
        valid = np.zeros((1, chunk), np.int32)
        tok[0, :m], tgt[0, :m], valid[0, :m] = ids[0, c : c + m], targets[0, c : c + m], 1
        pos = (c + np.arange(chunk, dtype=np.int32))[None]
        cache, s = step(state, cache, tok, tgt, pos, valid, jnp.int32(c))
        total += float(s)
    return total / n


def evaluate(checkpoint: str, kv_dtype: str, prompts, ppl_tokens, chunk: int, eos_ids) -> dict:
    """Greedy needle answers and the cached NLL with a `kv_dtype` cache."""
    import lwm
    from lwm.inference.sampler import Sampler

    model = lwm.load_model(checkpoint, overrides={"kv_dtype": kv_dtype})
    sampler = Sampler(model, prefill_chunk=chunk)
    t0 = time.process_time()
    answers = [
        sampler.generate([ids], max_new_tokens=max(map(len, expected)) + 8, eos_id=eos_ids)[0]
        for ids, expected in prompts
    ]
    nll = cached_nll(model, ppl_tokens, chunk)
    return {"answers": answers, "nll": nll, "cpu_s": round(time.process_time() - t0, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import math
    from pydoc_data.topics import topics

    from lwm.inference.runtime import load_tokenizer

    tokenizer = load_tokenizer(None, args.checkpoint)
    prompts = needle_prompts(tokenizer, args.lengths, args.depths)
    text = "".join(topics[k] for k in sorted(topics))
    ppl_tokens = tokenizer.encode(text, bos=bool(tokenizer.add_bos))[: args.ppl_length + 1]
    rows, ref = [], None
    for kv in args.kv_dtypes:
        r = evaluate(
            args.checkpoint, kv, prompts, ppl_tokens, args.prefill_chunk, tokenizer.eos_ids
        )
        texts = [tokenizer.decode([t for t in a if t < tokenizer.vocab_size]) for a in r["answers"]]
        correct = sum(all(v in t for v in exp) for t, (_, exp) in zip(texts, prompts, strict=True))
        ref = ref or r
        same = sum(a == b for a, b in zip(r["answers"], ref["answers"], strict=True))
        row = {
            "kv_dtype": kv,
            "needles_identical": same,
            "needles_correct": correct,
            "needles": len(prompts),
            "ppl_tokens": len(ppl_tokens) - 1,
            "perplexity": round(math.exp(r["nll"]), 4),
            "ppl_rel_diff": round(math.exp(r["nll"] - ref["nll"]) - 1.0, 5),
            "cpu_s": r["cpu_s"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'kv dtype':<14} {'identical':>9} {'correct':>8} {'ppl':>9} {'rel diff':>9}")
    for r in rows:
        ident = f"{r['needles_identical']}/{r['needles']}"
        print(
            f"{r['kv_dtype']:<14} {ident:>9} {r['needles_correct']:>8} "
            f"{r['perplexity']:>9.4f} {100 * r['ppl_rel_diff']:>8.3f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
