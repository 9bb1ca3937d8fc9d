"""The demo's training drills: what each record asks the model to learn."""

import re

from lwm.data.needles import DEFAULT_KEYS
from lwm.demo.data import copy_records, recall_records

NEEDLE = re.compile(r"The special magic (\w+) number is: (\d{7})\.")


def test_copy_drills_repeat_their_context():
    recs = copy_records(50, min_items=4, max_items=9, seed=3)
    vocab = {*DEFAULT_KEYS, *"0123456789"}
    assert len({r["context"] for r in recs}) == 50  # seeded but not degenerate
    for r in recs:
        words = r["context"].split()
        assert 4 <= len(words) <= 9 and set(words) <= vocab
        assert r["answer"] == r["context"] and r["question"] == ""
    assert copy_records(5, seed=3) == copy_records(5, seed=3)


def test_recall_drills_ask_every_needle_back_by_key():
    recs = recall_records(40, min_keys=2, max_keys=6, seed=1)
    shuffled = 0
    for r in recs:
        given = NEEDLE.findall(r["context"])
        asked = NEEDLE.findall(r["answer"])
        assert 2 <= len(given) <= 6
        assert len({k for k, _ in given}) == len(given)  # distinct keys: lookups are unambiguous
        assert sorted(asked) == sorted(given)  # every needle asked once, with its own number
        shuffled += asked != given
    assert shuffled > 20  # the order changes, so position alone cannot answer
