"""Bad-input battery, inference and evals (`generate`, `needle`, `perplexity`): silent wrong
results made loud, results of another run refused."""

from __future__ import annotations

import json

import pytest
from bad_input_fixtures import (
    digest,
    generate_args,
    one_line_error,
    text_assets,
    two_step_models,
)

from lwm.cli.main import main

__all__ = ["text_assets", "two_step_models"]  # fixtures in use


def _needle(a, ckpt, out, *extra):
    return [
        "needle",
        "--checkpoint",
        str(ckpt),
        "--tokenizer",
        str(a["tok"]),
        "--out",
        str(out),
    ] + [
        "--lengths",
        "256",
        "--depths",
        "0,1",
        "--max-new-tokens",
        "4",
        *extra,
    ]


def _ppl(a, ckpt, out, *extra):
    args = ["perplexity", "--checkpoint", str(ckpt), "--tokenizer", str(a["tok"])]
    return [*args, "--text", str(a["text"]), "--lengths", "32", "--segment", "8", "--out"] + [
        str(out),
        *extra,
    ]


@pytest.mark.parametrize("command", ["needle", "perplexity"])
def test_tokenizer_larger_than_vocab_refused(text_assets, tmp_path, capsys, command):
    out = tmp_path / "out"
    make = _needle if command == "needle" else _ppl
    rc = main(make(text_assets, text_assets["small"], out))
    one_line_error(capsys, 2, rc, f"lwm {command}: error: tokenizer has 300 pieces but", "64")
    assert not out.exists()


def test_perplexity_json_is_strict_json(text_assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_ppl(text_assets, text_assets["nan"], out)) == 0
    raw = (out / "perplexity.json").read_text()

    def refuse(name):
        raise AssertionError(f"{name} in perplexity.json")

    data = json.loads(raw, parse_constant=refuse)
    assert data["points"][0]["nll"] is None  # NaN written as null
    assert "nan" in capsys.readouterr().out


def test_perplexity_other_run_refused_then_overwrite(text_assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_ppl(text_assets, text_assets["fits"], out)) == 0
    before = digest(out)
    capsys.readouterr()
    other = _ppl(text_assets, text_assets["fits"], out)
    other[other.index("--segment") + 1] = "4"
    rc = main(other)
    one_line_error(capsys, 2, rc, "holds perplexity results of a different eval", "segment: 8")
    assert digest(out) == before
    assert main(_ppl(text_assets, text_assets["fits"], out)) == 0  # same run: read back
    assert digest(out) == before
    assert main([*other, "--overwrite"]) == 0
    assert json.loads((out / "perplexity.json").read_text())["segment"] == 4


def test_needle_other_grid_refused(text_assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_needle(text_assets, text_assets["fits"], out)) == 0
    before = digest(out)
    capsys.readouterr()
    other = _needle(text_assets, text_assets["fits"], out)
    other[other.index("--lengths") + 1] = "224"
    rc = main(other)
    one_line_error(capsys, 2, rc, "different eval (grid.lengths: [256] there, [224] now)")
    assert digest(out) == before
    assert main([*other, "--overwrite"]) == 0
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["length"] for r in records} == {224}  # the old grid is gone, not mixed in


def test_generate_says_when_max_new_tokens_is_cut(two_step_models, capsys):
    rc = main(generate_args(two_step_models[1])[:-1] + ["100"])
    err = capsys.readouterr().err.strip()
    assert rc == 0
    assert err == (
        "lwm generate: note: --max-new-tokens 100 cut to 61: the prompt has 3 tokens and "
        "max_sequence_length is 64"
    )


def test_error_hints_spell_the_flag(two_step_models, capsys):
    ids = ",".join(["1"] * 70)
    rc = main(["generate", "--checkpoint", str(two_step_models[1]), "--prompt-ids", ids])
    one_line_error(capsys, 2, rc, "longer than the model's max_sequence_length 64", "--truncate")
