"""Checkpoint-level eval runs shared by `lwm needle`, `lwm perplexity` and `lwm demo`."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from lwm.errors import LwmError
from lwm.io import write_json


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
    overwrite: bool = False,
    strict: bool = False,
    identity_extra: dict | None = None,
) -> str:
    """Runs (or resumes) the eval and writes heatmap.png and summary.json; returns the table.
    `strict`: the checkpoint's newest step must be readable (`--strict`). `identity_extra`: more
    settings that change answers (e.g. `{"kv_dtype": "int8"}`), stored with the results, so a
    results folder made with other settings is refused, not mixed.
    `model_loader() -> (model, mesh)` replaces loading `checkpoint`; `answerer` (as from
    `lazy_answerer`) replaces both, so several evals can share one sampler and its compiles."""
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.needle import run_needle_eval
    from lwm.evals.report import format_table, plot_heatmap, summarize

    answer = (
        lazy_answerer(
            model_loader
            or (lambda: load_eval_model(checkpoint, mesh_spec=mesh_spec, strict=strict)),
            eos_id=tokenizer.eos_ids,
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
        identity={"checkpoint": str(pathlib.Path(checkpoint).resolve()), **(identity_extra or {})},
        overwrite=overwrite,
    )
    variant = _variant_name(spec)
    summary = summarize(records, lengths, depths)
    out = pathlib.Path(out_dir)
    plot_heatmap(summary, out / "heatmap.png", title=title or variant)
    write_json(out / "summary.json", summary.to_dict())
    return format_table(summary, title=f"needle accuracy ({variant})")


def lazy_answerer(model_loader, *, eos_id, prefill_chunk: int = 512):
    """An answer function that loads the model (`model_loader() -> (model, mesh)`) and builds
    its sampler on first use only, so a finished eval resumes straight to the report. `eos_id`:
    the stop ids (an int, several, or None; `tokenizer.eos_ids`)."""
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
    overwrite: bool = False,
    strict: bool = False,
) -> str:
    """Perplexity of the last `segment` tokens at each context length; writes perplexity.png and
    perplexity.json (strict JSON: a non-finite value is null) to `out_dir`; returns a text table.
    `out_dir` follows the output-directory rule (`claim_output_dir`): the same run is read back,
    another is refused unless `overwrite`; the files are written only once all is computed.
    `strict`: the checkpoint's newest step must be readable (`--strict`)."""
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.perplexity import context_perplexity, plot_perplexity, segment_nll_fn
    from lwm.evals.results import claim_output_dir

    path = pathlib.Path(text_path)
    if not path.is_file():
        raise LwmError(f"text file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise LwmError(f"text file {path} is empty")
    out = pathlib.Path(out_dir)
    run_spec = {
        "checkpoint": str(pathlib.Path(checkpoint).resolve()),
        "tokenizer": str(getattr(tokenizer, "path", "")),
        "text": str(path.resolve()),
        "lengths": [int(n) for n in lengths],
        "segment": segment,
        "windows": windows,
    }
    claim = dict(
        config_file=PPL_CONFIG,
        outputs=PPL_OUTPUTS,
        overwrite=overwrite,
        what="perplexity",
    )
    if claim_output_dir(out, run_spec, write=False, **claim):
        if (out / "perplexity.json").is_file():  # the same run, finished: report it again
            return _perplexity_table(json.loads((out / "perplexity.json").read_text()))
    tokens = tokenizer.encode(text, bos=bool(tokenizer.add_bos))  # as HF's tokenizer(text)
    if model is None:
        model, _ = load_eval_model(checkpoint, mesh_spec=mesh_spec, strict=strict)
    points = context_perplexity(
        segment_nll_fn(model), tokens, lengths, segment=segment, windows=windows, progress=True
    )
    rows = [
        {"length": p.length, "nll": p.nll, "perplexity": p.perplexity, "tokens": p.tokens}
        for p in points
    ]
    result = {"segment": segment, "points": rows}
    claim_output_dir(out, run_spec, write=True, **claim)  # replaces a different run's files
    plot_perplexity(points, out / "perplexity.png")
    write_json(out / "perplexity.json", result)
    return _perplexity_table(result)


PPL_CONFIG = "perplexity_config.json"
PPL_OUTPUTS = ("perplexity.json", "perplexity.png")


def _perplexity_table(result: dict) -> str:
    rows = result["points"]
    lines = [
        f"perplexity of the last {result['segment']} tokens ({rows[0]['tokens']} scored per length)"
    ]
    for r in rows:
        ppl = r["perplexity"]
        lines.append(f"{r['length']:>9}  {'nan' if ppl is None else format(ppl, '10.3f'):>10}")
    return "\n".join(lines)
