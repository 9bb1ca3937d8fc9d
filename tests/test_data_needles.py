"""Needle tasks: depth placement in tokens, variants, determinism, haystack sources, CLI."""

import json

import pytest

from lwm.cli.main import main as lwm_main
from lwm.data.needles import make_needle_task, needle_sentence
from lwm.data.synth import write_text_corpus
from lwm.data.tokenizer import train_tokenizer
from lwm.errors import LwmError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("needles")
    write_text_corpus(d / "c.txt", 5000)
    return train_tokenizer([d / "c.txt"], 500, d / "t.model")


@pytest.mark.parametrize("haystack", ["noise", "random"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.77, 1.0])
def test_single_needle_lands_at_requested_token_depth(tok, haystack, depth):
    task = make_needle_task(tok, 1500, depth=depth, haystack=haystack, seed=2)
    ids = tok.encode(task.context)
    assert len(ids) == task.context_tokens
    full = len(ids) + len(tok.encode(task.question)) + len(tok.encode(task.answer)) + 2
    assert 1400 < full <= 1500
    (n,) = task.needles
    sentence = needle_sentence(n.key, n.value)
    assert tok.decode(ids[n.token_depth :]).startswith(sentence)
    assert task.context.count(sentence) == 1 and task.answers == (n.value,)
    assert len(n.value) == 7 and n.key in task.question
    # Within one haystack sentence (<= 12 tokens here) of the requested depth.
    haystack_tokens = task.context_tokens - len(tok.encode(sentence))
    assert abs(n.token_depth - depth * haystack_tokens) <= 12


def test_variants_and_determinism(tok):
    mk = make_needle_task(tok, 1200, depth=0.5, num_keys=4, num_queries=2, seed=5)
    assert len(mk.needles) == 4 and sum(n.queried for n in mk.needles) == 2
    assert len({n.key for n in mk.needles}) == 4 and len(mk.answers) == 2
    assert all(n.key in mk.question for n in mk.needles if n.queried)
    mv = make_needle_task(tok, 1200, depth=0.2, num_values=3, seed=5)
    assert len({n.key for n in mv.needles}) == 1 and len(set(mv.answers)) == 3
    ids = tok.encode(mv.context)
    for n in mk.needles + mv.needles:
        ctx = mk if n in mk.needles else mv
        ids = tok.encode(ctx.context)
        assert tok.decode(ids[n.token_depth :]).startswith(needle_sentence(n.key, n.value))
    again = make_needle_task(tok, 1200, depth=0.5, num_keys=4, num_queries=2, seed=5)
    assert again == mk
    assert make_needle_task(tok, 1200, depth=0.5, num_keys=4, num_queries=2, seed=6) != mk
    spread = make_needle_task(tok, 1200, depth=[0.1, 0.9], num_keys=2, num_queries=2, seed=1)
    d = sorted(n.token_depth for n in spread.needles)
    assert d[0] < 0.2 * spread.context_tokens and d[1] > 0.8 * spread.context_tokens


def test_text_directory_haystack_and_errors(tok, tmp_path):
    essays = tmp_path / "essays"
    essays.mkdir()
    (essays / "a.txt").write_text("A tired painter opens the harbour. " * 5 + "The end!")
    task = make_needle_task(tok, 600, depth=0.5, haystack=str(essays), seed=0)
    assert "painter" in task.context and task.context_tokens > 400
    (tmp_path / "empty").mkdir()
    with pytest.raises(LwmError, match="holds no text"):
        make_needle_task(tok, 600, haystack=str(tmp_path / "empty"))
    with pytest.raises(LwmError, match="no room"):
        make_needle_task(tok, 20)
    with pytest.raises(LwmError, match="num_queries"):
        make_needle_task(tok, 600, num_keys=1, num_queries=2)


def test_cli_synth_then_build_masks_the_prompt(tok, tmp_path):
    out = tmp_path / "n.jsonl"
    args = ["data", "synth", "needle", "--tokenizer", str(tok.path), "--out", str(out)]
    assert lwm_main([*args, "--num", "3", "--lengths", "512", "--seed", "1"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["depth"] for r in recs] == [0.0, 0.5, 1.0]
    from lwm.data.builder import build_dataset
    from lwm.data.loader import open_source

    build_dataset(
        out, tmp_path / "ds", tokenizer=tok, fields="[context+question],answer", quiet=True
    )
    src = open_source(tmp_path / "ds")
    for i in range(len(src)):
        ex = src[i]
        assert len(ex["tokens"]) <= 512
        trained = tok.decode(ex["tokens"][ex["loss_mask"] == 1][:-1])  # minus EOS
        assert trained in {r["answer"] for r in recs}
