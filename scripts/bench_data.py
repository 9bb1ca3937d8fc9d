"""Packed tokens/s of the training loader from a built dataset, on one core; prints JSON.

    python scripts/bench_data.py [--dataset DIR] [--seq-len 8192] [--batch 8] [--batches 40]

Without --dataset it generates random-sentence documents, trains a tokenizer and builds a dataset in
a temporary directory first (build speed is reported too). Compare `packed_tokens_per_s` with the
tokens/s of scripts/bench_train.py: the loader must not be the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time


def _build(tmp: pathlib.Path, num_docs: int) -> tuple[str, dict]:
    import numpy as np

    from lwm.data.builder import build_dataset
    from lwm.data.synth import random_sentences, write_text_corpus
    from lwm.data.tokenizer import train_tokenizer

    write_text_corpus(tmp / "corpus.txt", 20000)
    tok = train_tokenizer([tmp / "corpus.txt"], 1000, tmp / "tok.model")
    rng = np.random.default_rng(0)
    sents = random_sentences(4000, seed=1)
    with open(tmp / "docs.jsonl", "w") as f:
        for _ in range(num_docs):
            n = int(rng.integers(2, 120))  # ~30 to ~1800 tokens
            picks = rng.integers(0, len(sents), n)
            doc = " ".join(sents[i] for i in picks)
            f.write(json.dumps({"prompt": sents[picks[0]], "text": doc}) + "\n")
    t0 = time.perf_counter()
    meta = build_dataset(
        tmp / "docs.jsonl", tmp / "ds", tokenizer=tok, fields="[prompt],text", quiet=True
    )
    dt = time.perf_counter() - t0
    return str(tmp / "ds"), {
        "build_seconds": round(dt, 2),
        "build_examples_per_s": round(meta["num_examples"] / dt),
        "build_tokens_per_s": round(meta["num_tokens"] / dt),
        "dataset_tokens": meta["num_tokens"],
    }


def _measure(path: str, packing: str, seq_len: int, batch: int, batches: int) -> dict:
    import numpy as np

    from lwm.data.loader import make_host_iterator

    it = make_host_iterator(
        {"path": path, "packing": packing, "prefetch": 0}, seq_len=seq_len, batch_size=batch, seed=0
    )
    next(it)  # warm-up (opens files)
    times, fill = [], []
    for _ in range(batches):
        t0 = time.perf_counter()
        b = next(it)
        times.append(time.perf_counter() - t0)
        fill.append(float(np.mean(b["segment_ids"] > 0)))
    it.close()
    per_batch = statistics.median(times)
    return {
        "packed_tokens_per_s": round(batch * seq_len / per_batch),
        "real_tokens_per_s": round(batch * seq_len * statistics.mean(fill) / per_batch),
        "fill": round(statistics.mean(fill), 4),
        "median_batch_ms": round(per_batch * 1e3, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="a directory written by `lwm data build`")
    p.add_argument("--docs", type=int, default=4000, help="documents to generate without --dataset")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--packing", default="first_fit,greedy,pad")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    result: dict = {"seq_len": args.seq_len, "batch": args.batch, "cores": 1}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dataset
        if path is None:
            path, build = _build(pathlib.Path(tmp), args.docs)
            result.update(build)
        for packing in args.packing.split(","):
            result[packing] = _measure(path, packing, args.seq_len, args.batch, args.batches)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
