"""Built datasets and the packed loader: exact segments, sharding, exact resume, bad input."""

import collections
import json

import numpy as np
import pytest

from lwm.cli.main import main as lwm_main
from lwm.data.builder import build_dataset
from lwm.data.loader import make_host_iterator, make_train_iterator, open_source, read_metadata
from lwm.data.synth import random_sentences, write_text_corpus
from lwm.data.tokenizer import train_tokenizer
from lwm.errors import LwmError

SEQ = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    write_text_corpus(d / "c.txt", 5000)
    tok = train_tokenizer([d / "c.txt"], 500, d / "t.model")
    rng = np.random.default_rng(0)
    sents = random_sentences(2000, seed=1)
    with open(d / "qa.jsonl", "w") as f:
        for i in range(41):  # a prime count: shards of unequal size
            n = int(rng.choice([1, 2, 3, 12]))  # some examples longer than SEQ
            f.write(json.dumps({"q": sents[2 * i], "a": " ".join(sents[i : i + n])}) + "\n")
    meta = build_dataset(d / "qa.jsonl", d / "ds", tokenizer=tok, fields="[q],a", quiet=True)
    return {"dir": d, "path": str(d / "ds"), "tok": tok, "meta": meta}


def _expected_pieces(path, seq_len, long_examples="split", min_len=0):
    """Oracle: each example's (input, target, loss, vision, target-vision) pairs cut at seq_len."""
    src = open_source(path)
    out = collections.Counter()
    for i in range(len(src)):
        ex = src[i]
        t, m, v = ex["tokens"], ex["loss_mask"], ex["vision_mask"]
        if len(t) < min_len:
            continue
        n = len(t) - 1
        starts = range(0, n, seq_len) if long_examples == "split" else [0]
        if long_examples == "drop" and n > seq_len:
            continue
        for s in starts:
            e = min(n, s + seq_len)
            out[_key(t[s:e], t[s + 1 : e + 1], m[s + 1 : e + 1], v[s:e], v[s + 1 : e + 1])] += 1
    return out


def _key(*arrays):
    return tuple(tuple(int(x) for x in a) for a in arrays)


def _segments(batches):
    """Segments of packed rows, after checking positions / padding invariants."""
    out = collections.Counter()
    for b in batches:
        for r in range(b["tokens"].shape[0]):
            seg = b["segment_ids"][r]
            pad = seg == 0
            assert not b["loss_mask"][r][pad].any() and not b["tokens"][r][pad].any()
            assert (np.diff(seg[~pad]) >= 0).all() and (pad[:-1] <= pad[1:]).all()
            for s in np.unique(seg[~pad]):
                idx = np.flatnonzero(seg == s)
                assert (np.diff(idx) == 1).all()
                assert b["positions"][r][idx].tolist() == list(range(len(idx)))
                keys = ("tokens", "targets", "loss_mask", "vision_mask", "target_vision_mask")
                out[_key(*(b[k][r][idx] for k in keys))] += 1
    return out


def _epoch(path, **kw):
    cfg = {"path": path, "num_epochs": 1, "prefetch": 0, **kw.pop("cfg", {})}
    return list(make_host_iterator(cfg, seq_len=SEQ, seed=kw.pop("seed", 0), **kw))


@pytest.mark.parametrize("packing", ["first_fit", "greedy", "pad"])
def test_rows_hold_exactly_the_examples(built, packing):
    batches = _epoch(built["path"], batch_size=1, cfg={"packing": packing})
    assert _segments(batches) == _expected_pieces(built["path"], SEQ)
    assert {b["tokens"].dtype for b in batches} == {np.dtype(np.int32)}
    assert {b["loss_mask"].dtype for b in batches} == {np.dtype(np.float32)}
    rows = len(batches)
    if packing == "pad":
        assert all(b["segment_ids"].max() == 1 for b in batches)
    else:
        assert rows < len(_expected_pieces(built["path"], SEQ))


def test_first_fit_packs_at_least_as_tight_as_greedy(built):
    ff = _epoch(built["path"], batch_size=1, cfg={"packing": "first_fit"})
    gr = _epoch(built["path"], batch_size=1, cfg={"packing": "greedy"})
    assert len(ff) <= len(gr)


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_long_examples_truncate_or_drop(built, mode):
    batches = _epoch(built["path"], batch_size=1, cfg={"long_examples": mode})
    expected = _expected_pieces(built["path"], SEQ, mode)
    assert _segments(batches) == expected


def test_two_processes_see_every_example_once_per_epoch(built):
    shards = [
        _segments(_epoch(built["path"], batch_size=1, shard_index=i, shard_count=2))
        for i in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert shards[0] + shards[1] == _expected_pieces(built["path"], SEQ)
    # Two epochs: each example twice, in a different order.
    two = _epoch(built["path"], batch_size=1, cfg={"num_epochs": 2, "packing": "pad"})
    expected = _expected_pieces(built["path"], SEQ)
    assert _segments(two) == expected + expected
    half = len(two) // 2
    assert [b["tokens"].tolist() for b in two[:half]] != [b["tokens"].tolist() for b in two[half:]]


def test_resume_mid_epoch_is_exact(built):
    cfg = {"path": built["path"], "prefetch": 2, "packing": "first_fit"}
    it = make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=5)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON
    reference = [next(it) for _ in range(20)]
    assert it.get_state()["next"] > 41  # the reference crossed an epoch boundary
    it.close()
    restored = make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=5)
    restored.set_state(state)
    for a, b in zip(reference, [next(restored) for _ in range(20)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    restored.close()
    other = make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=6)
    with pytest.raises(LwmError, match="seed"):
        other.set_state(state)


def test_train_iterator_global_arrays_on_mesh(built):
    import jax

    from lwm.sharding import make_mesh

    mesh = make_mesh({"dp": 2, "fsdp": 2, "tp": 1, "sp": 2})
    cfg = {"path": built["path"], "prefetch": 0}
    it = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=4, mesh=mesh, seed=1)
    batch = next(it)
    host = next(make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=1))
    for k, v in batch.items():
        assert isinstance(v, jax.Array) and v.shape == (4, SEQ)
        assert v.sharding.spec == jax.sharding.PartitionSpec(("dp", "fsdp"), "sp")
        np.testing.assert_array_equal(np.asarray(v), host[k])
    assert it.get_state()["next"] > 0


def test_build_metadata_and_refusals(built, tmp_path):
    meta = read_metadata(built["path"])
    assert meta["num_examples"] == 41 == len(open_source(built["path"]))
    assert meta["num_tokens"] == sum(
        len(open_source(built["path"])[i]["tokens"]) for i in range(41)
    )
    assert meta["max_text_id"] < built["tok"].vocab_size
    with pytest.raises(LwmError, match="exists"):
        build_dataset(
            built["dir"] / "qa.jsonl", built["path"], tokenizer=built["tok"], fields="[q],a"
        )
    with pytest.raises(LwmError, match="outside the model's vocabulary"):
        make_host_iterator(
            {"path": built["path"], "text_vocab_size": 100}, seq_len=SEQ, batch_size=1, seed=0
        )


def test_bad_lines_name_file_and_line_or_are_counted(built, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"q": "here we go", "a": "the sky"})
    bad.write_text("\n".join([good, good, "{not json", good, json.dumps({"q": "x"}), good]) + "\n")
    tok = str(built["tok"].path)
    args = ["data", "build", "--input", str(bad), "--fields", "[q],a", "--tokenizer", tok]
    assert lwm_main([*args, "--out", str(tmp_path / "o1")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after TFDS's progress bars
    assert last.startswith(f"lwm data: error: {bad}:3: not valid JSON")
    assert not (tmp_path / "o1").exists()
    bad.write_text("\n".join([good, json.dumps({"q": "x"}), good]) + "\n")
    assert lwm_main([*args, "--out", str(tmp_path / "o2")]) == 2
    assert f"{bad}:2: missing field 'a'" in capsys.readouterr().err
    bad.write_text("\n".join([good, "[1, 2]", "{oops", json.dumps({"q": "x"}), good]) + "\n")
    assert lwm_main([*args, "--out", str(tmp_path / "o3"), "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert "3 bad lines skipped" in out.out
    assert read_metadata(tmp_path / "o3")["num_examples"] == 2
    assert lwm_main([*args, "--out", str(tmp_path / "o3"), "--skip-bad"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_text_directory_input(built, tmp_path):
    d = tmp_path / "essays"
    d.mkdir()
    (d / "a.txt").write_text("The sky is blue. Here we go.")
    (d / "b.txt").write_text("There and back again.")
    meta = build_dataset(d, tmp_path / "ds", tokenizer=built["tok"], quiet=True)
    src = open_source(tmp_path / "ds")
    texts = sorted(built["tok"].decode(src[i]["tokens"][1:-1]) for i in range(len(src)))
    assert meta["num_examples"] == 2 and texts == [
        "The sky is blue. Here we go.",
        "There and back again.",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LwmError, match="no .txt"):
        build_dataset(tmp_path / "empty", tmp_path / "ds2", tokenizer=built["tok"])


def test_min_example_len_reads_only_the_long_examples(built):
    src = open_source(built["path"])
    cut = int(np.median([len(src[i]["tokens"]) for i in range(len(src))]))
    got = _segments(_epoch(built["path"], batch_size=1, cfg={"min_example_len": cut}))
    assert got == _expected_pieces(built["path"], SEQ, min_len=cut)
    assert sum(got.values()) < sum(_expected_pieces(built["path"], SEQ).values())


def _stretched(batches):
    """Per segment: (tokens, positions) of every packed piece."""
    out = []
    for b in batches:
        for r in range(b["tokens"].shape[0]):
            seg = b["segment_ids"][r]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                out.append((b["tokens"][r][idx].tolist(), b["positions"][r][idx]))
    return out


def test_position_stretch_opens_one_seeded_gap_per_example(built):
    plain = _stretched(_epoch(built["path"], batch_size=2))
    cfg = {"position_stretch": 3.0}
    stretched = _stretched(_epoch(built["path"], batch_size=2, cfg=cfg))
    # Same rows, same tokens; only the positions differ.
    assert [t for t, _ in stretched] == [t for t, _ in plain]
    gaps = 0
    for _, pos in stretched:
        d = np.diff(pos)
        assert pos[0] == 0 and (d >= 1).all() and (d > 1).sum() <= 1
        assert pos[-1] < 3 * SEQ
        gaps += int((d > 1).any())
    assert gaps > len(stretched) // 2
    assert max(int(p[-1]) for _, p in stretched) >= 2 * SEQ  # spread well past the row length
    # Deterministic: the same seed gives the same gaps, another seed others; resume is exact.
    again = _stretched(_epoch(built["path"], batch_size=2, cfg=cfg))
    assert all((a[1] == b[1]).all() for a, b in zip(stretched, again))
    other = _stretched(_epoch(built["path"], batch_size=2, cfg=cfg, seed=1))
    assert any(len(a[1]) > 1 and (a[1] != b[1]).any() for a, b in zip(stretched, other))
    full = {"path": built["path"], "prefetch": 0, **cfg}
    it = make_host_iterator(full, seq_len=SEQ, batch_size=2, seed=0)
    next(it)
    state = it.get_state()
    ref = [next(it)["positions"] for _ in range(3)]
    it2 = make_host_iterator(full, seq_len=SEQ, batch_size=2, seed=0)
    it2.set_state(state)
    for a in ref:
        np.testing.assert_array_equal(a, next(it2)["positions"])


@pytest.mark.parametrize("bad", [{"position_stretch": 0.5}, {"min_example_len": -1}])
def test_bad_stretch_or_min_length_is_refused(built, bad):
    with pytest.raises(Exception, match=next(iter(bad))):
        _epoch(built["path"], batch_size=1, cfg=bad)
