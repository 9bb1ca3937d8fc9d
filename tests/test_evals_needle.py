"""Needle eval harness: placement in the prompt, batching (incl. exact multiples), scoring,
resume, heatmap and summary. An oracle answerer that reads the prompt stands in for a model here;
the model path is covered by tests/test_evals_cli.py."""

import json
import re

import numpy as np
import pytest

from lwm.data.needles import needle_sentence
from lwm.data.tokenizer import train_tokenizer
from lwm.demo.data import write_corpus
from lwm.errors import LwmError
from lwm.evals.needle import (
    Job,
    NeedleSpec,
    build_prompt,
    check_lengths,
    load_haystack,
    make_task,
    padded_batches,
    parse_depths,
    run_needle_eval,
    score_answer,
)
from lwm.evals.report import format_table, plot_heatmap, summarize
from lwm.evals.results import RESULTS_FILE, read_results


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("needle_eval")
    write_corpus(d / "c.txt", 3000)
    return train_tokenizer([d / "c.txt"], 768, d / "t.model")


class Oracle:
    """Answers by reading the asked keys' numbers out of the prompt text (a perfect retriever);
    `limit` answers only the first `limit` asked keys. Records every batch it gets."""

    def __init__(self, tok, limit=None, fail_after=None):
        self.tok, self.limit, self.fail_after = tok, limit, fail_after
        self.batches = []

    def __call__(self, prompts, max_new_tokens):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            question = text[text.rindex("Question:") :]
            table = dict(re.findall(r"special magic (\w+) number is: (\d{7})", text))
            asked = [k for k in table if k in question][: self.limit]
            answer = " ".join(needle_sentence(k, table[k]) for k in asked)
            out.append(self.tok.encode(answer)[:max_new_tokens] + [self.tok.eos_id])
        return out


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_needle_lands_at_requested_token_depth_in_the_prompt(tok, depth):
    spec = NeedleSpec()
    task = make_task(tok, load_haystack("noise"), spec, Job(1024, depth, 0))
    prompt = build_prompt(tok, task)
    (needle,) = task.needles
    ids = tok.encode(needle_sentence(needle.key, needle.value))
    starts = [i for i in range(len(prompt)) if prompt[i : i + len(ids)] == ids]
    assert len(starts) == 1 and prompt[0] == tok.bos_id
    pos = starts[0] - 1  # offset in the context (after BOS)
    assert pos == needle.token_depth
    sentence_tokens = max(len(tok.encode(s)) for s in task.context.split(". "))
    haystack_tokens = task.context_tokens - len(ids)
    assert abs(pos - depth * haystack_tokens) <= sentence_tokens + 1
    assert len(prompt) < 1024


@pytest.mark.parametrize("count,batch", [(8, 4), (8, 8), (9, 4), (3, 4), (1, 1)])
def test_padded_batches_cover_every_item_once(count, batch):
    items = list(range(count))
    got = list(padded_batches(items, batch))
    assert len(got) == -(-count // batch)
    assert all(len(b) == batch for b, _ in got)
    real = [x for b, n in got for x in b[:n]]
    assert real == items


def test_multi_needle_exact_multiple_of_batch_all_correct(tok, tmp_path):
    # 2 lengths x 2 depths x 2 samples = 8 samples in batches of 4: the reference's off-by-one.
    spec = NeedleSpec(num_needles=4, num_retrieve=2)
    oracle = Oracle(tok)
    recs = run_needle_eval(
        oracle,
        tok,
        lengths=[512, 768],
        depths=[0.2, 0.8],
        samples=2,
        out_dir=tmp_path,
        spec=spec,
        batch_size=4,
        progress=False,
    )
    assert oracle.batches == [4, 4]
    assert len(recs) == 8 and len({(r["length"], r["depth"], r["sample"]) for r in recs}) == 8
    assert all(r["correct"] and r["score"] == 1.0 and len(r["expected"]) == 2 for r in recs)
    assert len(read_results(tmp_path)) == 8
    # Answering only one of the two asked keys: half the recall, never correct.
    half = run_needle_eval(
        Oracle(tok, limit=1),
        tok,
        lengths=[512],
        depths=[0.5],
        samples=3,
        out_dir=tmp_path / "half",
        spec=spec,
        batch_size=2,
        progress=False,
    )
    assert [r["score"] for r in half] == [0.5] * 3 and not any(r["correct"] for r in half)


def test_results_resume_after_interruption(tok, tmp_path):
    kw = dict(
        lengths=[256, 512],
        depths=[0.0, 0.5, 1.0],
        samples=1,
        batch_size=2,
        progress=False,
        spec=NeedleSpec(num_needles=2),
    )
    with pytest.raises(KeyboardInterrupt):
        run_needle_eval(Oracle(tok, fail_after=2), tok, out_dir=tmp_path / "a", **kw)
    assert len(read_results(tmp_path / "a")) == 4
    with open(tmp_path / "a" / RESULTS_FILE, "a") as f:
        f.write('{"length": 512, "dep')  # a torn line from a crash mid-write
    rest = Oracle(tok)
    resumed = run_needle_eval(rest, tok, out_dir=tmp_path / "a", **kw)
    assert rest.batches == [2]  # only the two missing samples were answered
    fresh = run_needle_eval(Oracle(tok), tok, out_dir=tmp_path / "b", **kw)
    assert resumed == fresh
    assert len(read_results(tmp_path / "a")) == 6
    again = Oracle(tok)
    assert run_needle_eval(again, tok, out_dir=tmp_path / "a", **kw) == fresh
    assert again.batches == []
    with pytest.raises(LwmError, match="different eval"):
        run_needle_eval(
            Oracle(tok), tok, out_dir=tmp_path / "a", **{**kw, "spec": NeedleSpec(num_needles=3)}
        )


def test_summary_table_and_heatmap(tok, tmp_path):
    recs = []
    for length, acc in ((1024, 1.0), (2048, 0.5), (4096, 0.0)):
        for d in (0.0, 0.5, 1.0):
            for k in range(2):
                ok = k < acc * 2
                recs.append(dict(length=length, depth=d, sample=k, correct=ok, score=float(ok)))
    s = summarize(recs, [1024, 2048, 4096, 8192], [0.0, 0.5, 1.0])
    assert s.accuracy[:, 0].tolist() == [1.0] * 3 and s.accuracy[:, 1].tolist() == [0.5] * 3
    assert np.isnan(s.accuracy[:, 3]).all() and s.counts.sum() == 18
    assert s.accuracy_per_length()[:3] == [1.0, 0.5, 0.0] and s.overall == pytest.approx(0.5)
    table = format_table(s)
    assert "1K" in table and "8K" in table and "100%" in table and "overall 50%" in table
    png = plot_heatmap(s, tmp_path / "h.png")
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    assert img.shape[0] > 150 and img.shape[1] > 300
    # Green-dominant (100% cells) and red-dominant (0% cells) pixels are both present.
    r, g = img[..., 0], img[..., 1]
    assert ((g > r + 0.25) & (g > 0.5)).sum() > 500
    assert ((r > g + 0.4) & (r > 0.6)).sum() > 500


def test_bad_inputs(tok, tmp_path):
    warnings = []
    assert check_lengths([512, 4096], 2048, skip_too_long=True, warn=warnings.append) == [512]
    assert "4096" in warnings[0]
    with pytest.raises(LwmError, match="max_sequence_length 2048"):
        check_lengths([512, 4096], 2048, skip_too_long=False, warn=warnings.append)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LwmError, match="holds no text"):
        load_haystack(str(tmp_path / "empty"))
    with pytest.raises(LwmError, match="haystack"):
        load_haystack(str(tmp_path / "missing"))
    with pytest.raises(LwmError, match="retrieve"):
        NeedleSpec(num_needles=2, num_retrieve=3)
    assert parse_depths("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_depths("0,0.5") == [0.0, 0.5]
    with pytest.raises(LwmError, match="bad depths"):
        parse_depths("a,b")
    assert score_answer("is: 1234567 and 7654321.", ["1234567", "7654321", "1111111"]) == 2


def test_jsonl_haystack(tok, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"text": f"A tired painter opens the harbour {i}. Then rain."})
            for i in range(50)
        )
        + "\n"
    )
    task = make_task(
        tok, load_haystack(str(docs)), NeedleSpec(haystack=str(docs)), Job(512, 0.5, 0)
    )
    assert "painter" in task.context and "special magic" in task.context


def test_results_made_with_another_kv_dtype_are_refused(tok, tmp_path):
    """`lwm needle --kv-dtype` joins the results' identity: a folder made with an int8 cache is
    resumed by int8 only; another cache dtype is refused rather than mixed in."""
    from lwm.evals.run import evaluate_needles

    kw = dict(lengths=[256], depths=[0.0, 1.0], samples=1, spec=NeedleSpec(), batch_size=2)
    out = tmp_path / "r"
    ckpt = str(tmp_path)
    evaluate_needles(
        ckpt, tok, out_dir=out, answerer=Oracle(tok), identity_extra={"kv_dtype": "int8"}, **kw
    )
    again = Oracle(tok)
    evaluate_needles(
        ckpt, tok, out_dir=out, answerer=again, identity_extra={"kv_dtype": "int8"}, **kw
    )
    assert again.batches == []  # resumed: nothing to redo
    with pytest.raises(LwmError, match="different eval"):
        evaluate_needles(
            ckpt,
            tok,
            out_dir=out,
            answerer=Oracle(tok),
            identity_extra={"kv_dtype": "bfloat16"},
            **kw,
        )
