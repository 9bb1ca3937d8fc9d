"""Checkpoint-level eval runs shared by `lwm needle`, `lwm perplexity` and `lwm demo`."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from lwm.errors import LwmError


def evaluate_needles(
    checkpoint: str,
    tokenizer,
    *,
    lengths: list[int],
    depths: list[float],
    samples: int,
    spec,
    out_dir: str,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    mesh_spec: str | None = None,
    prefill_chunk: int = 512,
    title: str | None = None,
    model_loader=None,
    answerer=None,
) -> str:
    """Runs (or resumes) the eval and writes heatmap.png and summary.json; returns the table.
    `model_loader() -> (model, mesh)` replaces loading `checkpoint`; `answerer` (as from
    `lazy_answerer`) replaces both, so several evals can share one sampler and its compiles."""
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.needle import run_needle_eval
    from lwm.evals.report import format_table, plot_heatmap, summarize

    answer = (
        lazy_answerer(
            model_loader or (lambda: load_eval_model(checkpoint, mesh_spec=mesh_spec)),
            eos_id=tokenizer.eos_id,
            prefill_chunk=prefill_chunk,
        )
        if answerer is None
        else answerer
    )

    records = run_needle_eval(
        answer,
        tokenizer,
        lengths=lengths,
        depths=depths,
        samples=samples,
        out_dir=out_dir,
        spec=spec,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        identity={"checkpoint": str(pathlib.Path(checkpoint).resolve())},
    )
    variant = _variant_name(spec)
    summary = summarize(records, lengths, depths)
    out = pathlib.Path(out_dir)
    plot_heatmap(summary, out / "heatmap.png", title=title or variant)
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1))
    return format_table(summary, title=f"needle accuracy ({variant})")


def lazy_answerer(model_loader, *, eos_id: int | None, prefill_chunk: int = 512):
    """An answer function that loads the model (`model_loader() -> (model, mesh)`) and builds
    its sampler on first use only, so a finished eval resumes straight to the report."""
    from lwm.evals.model_runner import SamplerAnswerer

    state = {}

    def answer(prompts, max_new_tokens, **kw):
        if "answer" not in state:
            model, mesh = model_loader()
            state["answer"] = SamplerAnswerer(
                model, mesh=mesh, eos_id=eos_id, prefill_chunk=prefill_chunk
            )
        return state["answer"](prompts, max_new_tokens, **kw)

    return answer


def _variant_name(spec) -> str:
    parts = [f"{spec.num_needles} needle" + ("s" if spec.num_needles > 1 else "")]
    if spec.num_retrieve > 1:
        parts.append(f"{spec.num_retrieve} asked")
    if spec.num_values > 1:
        parts.append(f"{spec.num_values} values each")
    return ", ".join(parts)


def evaluate_perplexity(
    checkpoint: str,
    tokenizer,
    text_path: str,
    *,
    lengths: Sequence[int],
    out_dir: str,
    segment: int = 256,
    windows: int = 4,
    mesh_spec: str | None = None,
    model=None,
) -> str:
    """Perplexity of the last `segment` tokens at each context length; writes perplexity.png and
    perplexity.json to `out_dir`; returns a text table."""
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.perplexity import context_perplexity, plot_perplexity, segment_nll_fn

    path = pathlib.Path(text_path)
    if not path.is_file():
        raise LwmError(f"text file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise LwmError(f"text file {path} is empty")
    tokens = tokenizer.encode(text, bos=True)
    if model is None:
        model, _ = load_eval_model(checkpoint, mesh_spec=mesh_spec)
    points = context_perplexity(
        segment_nll_fn(model), tokens, lengths, segment=segment, windows=windows, progress=True
    )
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_perplexity(points, out / "perplexity.png")
    rows = [
        {"length": p.length, "nll": p.nll, "perplexity": p.perplexity, "tokens": p.tokens}
        for p in points
    ]
    (out / "perplexity.json").write_text(json.dumps({"segment": segment, "points": rows}, indent=1))
    lines = [f"perplexity of the last {segment} tokens ({points[0].tokens} scored per length)"]
    lines += [f"{p.length:>9}  {p.perplexity:10.3f}" for p in points]
    return "\n".join(lines)
