"""The demo's training data: what each record asks the model to learn, and how it is encoded."""

import re

import numpy as np
import pytest

from lwm.data.fields import ExampleEncoder
from lwm.data.synth import NOISE_SENTENCES, write_text_corpus
from lwm.data.tokenizer import train_tokenizer
from lwm.demo.data import (
    TaskBucket,
    copy_items,
    copy_records,
    fields_spec,
    needle_records,
    recall_cue,
)
from lwm.errors import LwmError

NEEDLE = re.compile(r"The special magic (\w+) number is: (\d{7})\.")
EXTRA = 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_data")
    write_text_corpus(d / "c.txt", 3000)
    return train_tokenizer([d / "c.txt"], 500, d / "t.model")


def test_copy_drills_repeat_their_items_across_haystack_filler(tok):
    buckets = [TaskBucket(48, 128, 30), TaskBucket(200, 400, 30)]
    recs = copy_records(tok, buckets, ratio=1.0, extra_queries=EXTRA, seed=3)
    assert len(recs) == 60 and recs == copy_records(tok, buckets, extra_queries=EXTRA, seed=3)
    items = set(copy_items(tok))
    # Single pieces: keys and bare digits, no word-boundary piece among them.
    assert all(tok.decode([i]).strip() for i in items)
    assert {tok.decode([i]) for i in items} >= set("0123456789")
    noise = [tok.encode(x) for x in NOISE_SENTENCES]
    enc = ExampleEncoder(tok, fields_spec(EXTRA))
    fillers = []
    for r, b in zip(recs, [buckets[0]] * 30 + [buckets[1]] * 30):
        copy, ctx = r["answer"], r["context"]
        assert 1 <= len(copy) <= 16 and set(copy) <= items and r["question"] == ""
        assert ctx[: len(copy)] == copy
        filler = ctx[len(copy) :]
        rest = filler
        while rest:  # the filler is whole noise sentences
            head = next(n for n in noise if rest[: len(n)] == n)
            rest = rest[len(head) :]
        assert all(r[f"q{i}"] == r[f"a{i}"] == "" for i in range(2, EXTRA + 2))
        ex = enc(r)
        assert b.min_len - 16 <= len(ex) <= b.max_len  # filler is added in whole sentences
        assert ex.tokens[ex.loss_mask == 1].tolist() == [*copy, tok.eos_id]
        fillers.append(len(filler))
    # The source sits at many distances, up to most of the longer bucket's rows.
    assert min(fillers[:30]) < 60 and max(fillers[30:]) > 300
    assert len(set(fillers)) > 30


def test_needle_tasks_ask_the_other_needles_back_one_by_one(tok):
    buckets = [TaskBucket(200, 600, 40)]
    recs = needle_records(tok, buckets, max_keys=6, max_queries=2, extra_queries=EXTRA, seed=1)
    assert recs == needle_records(
        tok, buckets, max_keys=6, max_queries=2, extra_queries=EXTRA, seed=1
    )
    keys = set(fields_spec(EXTRA).replace("[", "").replace("]", "").replace("+", ",").split(","))
    asked_extra = 0
    for r in recs:
        assert set(r) == keys  # every record has every field of the spec
        given = dict(NEEDLE.findall(r["context"]))
        in_question = {k for k in given if k in r["question"]}
        assert in_question and all(given[k] in r["answer"] for k in in_question)
        extra = [(r[f"q{i}"], r[f"a{i}"]) for i in range(2, EXTRA + 2) if r[f"q{i}"]]
        assert len(extra) == min(EXTRA, len(given) - len(in_question))
        cues = [q.split()[3] for q, _ in extra]
        assert len(set(cues)) == len(cues) and not set(cues) & in_question
        for (q, a), key in zip(extra, cues):
            assert q == recall_cue(key) and a == given[key] + "."
        assert all(not r[f"q{i}"] and not r[f"a{i}"] for i in range(2 + len(extra), EXTRA + 2))
        asked_extra += len(extra)
    assert asked_extra > len(recs)  # the extra queries are a real part of the signal


def test_only_the_answers_are_trained_on(tok):
    rec = needle_records(
        tok, [TaskBucket(300, 300, 5)], max_keys=5, max_queries=1, extra_queries=EXTRA, seed=4
    )
    enc = ExampleEncoder(tok, fields_spec(EXTRA))
    for r in rec:
        ex = enc(r)
        trained = tok.decode(ex.tokens[ex.loss_mask == 1].tolist())
        answers = [r["answer"]] + [r[f"a{i}"] for i in range(2, EXTRA + 2) if r[f"a{i}"]]
        assert trained.replace(" ", "") == "".join(answers).replace(" ", "")
        starts = np.flatnonzero(np.diff(ex.loss_mask.astype(int)) == 1)
        assert len(starts) == len(answers)  # one trained run per answer, cues masked between


def test_bucket_min_keys_sets_the_fewest_needles_per_task(tok):
    def needles_per_task(bucket):
        recs = needle_records(tok, [bucket], max_keys=8, max_queries=2, seed=5)
        return [len(NEEDLE.findall(r["context"])) for r in recs]

    dense = needles_per_task(TaskBucket(400, 500, 40, 3))
    assert min(dense) >= 3 and max(dense) > 3
    # The default draws from 1 needle up; a short bucket caps the count at what fits.
    assert min(needles_per_task(TaskBucket(400, 500, 40))) == 1
    short = needles_per_task(TaskBucket(150, 170, 20, 6))
    assert 1 <= min(short) and max(short) <= 3


def test_bucket_entries_parse_or_fail_with_one_line():
    assert TaskBucket.parse([48, 128, 10]) == TaskBucket(48, 128, 10)
    assert TaskBucket.parse((129, 256, 8, 3)) == TaskBucket(129, 256, 8, 3)
    for bad in ([48, 128], [48, 128, 10, 2, 1], [128, 48, 10], [48, 128, 10, 0], [48, 1.5, 3]):
        with pytest.raises(LwmError, match="demo.task_buckets entry"):
            TaskBucket.parse(bad)


def test_copy_ratio_per_bucket(tok):
    buckets = [TaskBucket(48, 128, 20), TaskBucket(200, 300, 20)]
    recs = copy_records(tok, buckets, ratio=[1.0, 0.25], extra_queries=EXTRA, seed=3)
    enc = ExampleEncoder(tok, fields_spec(EXTRA))
    lengths = [len(enc(r)) for r in recs]
    assert len(recs) == 25  # 20 drills for the first bucket, 5 for the second
    assert all(n <= 128 for n in lengths[:20]) and all(n >= 184 for n in lengths[20:])
    # One number for every bucket is the same as that number per bucket.
    same = copy_records(tok, buckets, ratio=[0.5, 0.5], extra_queries=EXTRA, seed=3)
    assert same == copy_records(tok, buckets, ratio=0.5, extra_queries=EXTRA, seed=3)
    for bad in ([1.0], [1.0, -1.0], [1.0, "x"]):
        with pytest.raises(LwmError, match=r"demo.copy_ratio .*one per demo.task_buckets"):
            copy_records(tok, buckets, ratio=bad, seed=3)


def test_digit_copy_drills_copy_digits_only(tok):
    buckets = [TaskBucket(100, 128, 200)]
    recs = copy_records(tok, buckets, digit_fraction=0.5, extra_queries=EXTRA, seed=2)
    digits = {tok.encode(d)[-1] for d in "0123456789"}
    only_digits = [r for r in recs if set(r["answer"]) <= digits]
    # About half the drills (binomial, p = 0.5 plus the rare all-digit draw of the 42 items).
    assert 70 <= len(only_digits) <= 130
    # Digits recur within a drill: the copy cannot key on the current token alone.
    assert np.mean([len(set(r["answer"])) < len(r["answer"]) for r in only_digits]) > 0.9
    plain = copy_records(tok, buckets, extra_queries=EXTRA, seed=2)
    assert sum(set(r["answer"]) <= digits for r in plain) < 10
    with pytest.raises(LwmError, match="copy_digit_fraction must be in"):
        copy_records(tok, buckets, digit_fraction=1.5, seed=2)
