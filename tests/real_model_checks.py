"""Checks of lwm's outputs on the real model against transformers on the same GGUF (the oracle),
shared by tests/test_real_model.py and tests/test_start_from_modern.py: a command runs once and
its results are compared here."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lwm.data.tokenizer import load_tokenizer


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def hf_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor([list(ids)], dtype=torch.long)).logits[0].numpy()


def hf_greedy(model, ids, steps: int, stops) -> list[int]:
    """transformers' greedy tokens after `ids` (KV-cached), stopping after a stop id."""
    import torch
    from transformers import DynamicCache

    got = []
    tok = torch.as_tensor([list(ids)], dtype=torch.long)
    cache = DynamicCache()
    with torch.no_grad():
        for _ in range(steps):
            out = model(tok, cache=cache, use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            got.append(int(tok))
            if got[-1] in stops:
                break
    return got


def check_needle(out: pathlib.Path, haystack: pathlib.Path, ckpt, hf_model, hf_tok, batch: int):
    """The records of `lwm needle --template auto --samples 1 --batch-size batch` in `out`: for
    every sample, lwm's prompt equals transformers' chat-template ids, and lwm's answer equals
    transformers' greedy answer to it (alone, unpadded). Prints and returns the records."""
    from lwm.evals.needle import Job, NeedleSpec, build_prompt, load_haystack, make_task
    from lwm.inference.answer_text import answer_text
    from lwm.inference.prompts import LWM_NEEDLE_INSTRUCTION

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(ckpt)
    spec = NeedleSpec(haystack=str(haystack), template="chat")
    hay = load_haystack(spec.haystack)
    tasks = [make_task(tokenizer, hay, spec, Job(r["length"], r["depth"], 0)) for r in records]
    # The CLI decodes a batch for its longest answer + 8 tokens (records are in batch order).
    budgets = [len(tokenizer.encode(t.answer)) + 8 for t in tasks]
    budgets = [max(budgets[i - i % batch : i - i % batch + batch]) for i in range(len(tasks))]
    for rec, task, budget in zip(records, tasks, budgets):
        ours = build_prompt(tokenizer, task, spec.template)
        user = f"{task.context} {task.question} {LWM_NEEDLE_INSTRUCTION}"
        theirs = hf_tok.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
        )
        theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
        assert ours == theirs and len(ours) == rec["prompt_tokens"]
        hf_ids = hf_greedy(hf_model, theirs, budget, set(tokenizer.eos_ids))
        assert rec["output"] == answer_text(tokenizer, hf_ids, tokenizer.eos_ids), rec
    print()
    for rec in records:
        print(
            f"needle {rec['length']:>5} depth {rec['depth']:.2f}: score {rec['score']:.2f} "
            f"expected {rec['expected']} answer {rec['output']!r}"
        )
    return records


def check_perplexity(out: pathlib.Path, text: pathlib.Path, segment: int, hf_model, hf_tok):
    """`lwm perplexity --windows 1 --segment segment` results in `out` against transformers on
    its own tokens of the same file: equal to 1e-3 relative at every length."""
    points = json.loads((out / "perplexity.json").read_text())["points"]
    ours = {p["length"]: p["perplexity"] for p in points}
    tokens = np.asarray(hf_tok(text.read_text())["input_ids"])
    end = max(ours)  # one window: every length ends at the longest one's end
    print()
    for n in sorted(ours):
        window = tokens[end - n : end + 1]
        logp = log_softmax(hf_logits(hf_model, window[:-1])[-segment:])
        nll = -np.take_along_axis(logp, window[-segment:, None], axis=-1).mean()
        theirs = float(np.exp(nll))
        print(f"perplexity {n:>5}: lwm {ours[n]:.4f} transformers {theirs:.4f}")
        assert abs(ours[n] - theirs) <= 1e-3 * theirs
    return ours
