"""`--drop-static`: the static-frame rule on hand-built codes (thresholds 0, 1, between, the exact
boundary, last-kept vs previous frame), bad thresholds (one-line CLI error, nothing written), a
generated video with static stretches and one needle frame through a tiny VQGAN via
`lwm video tokenize --drop-static`, and the video needle eval's drop option."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from video_helpers import save_tiny_vqgan, write_synthetic

from lwm.cli.main import main
from lwm.errors import LwmError
from lwm.evals.needle import Job
from lwm.evals.needle_images import COLOURS, make_needle
from lwm.video.static_drop import check_threshold, drop_static, frame_differences

RES, TPF = 16, 16  # tiny VQGAN: 16px frames -> 4x4 codes
THRESHOLDS = (0.1, 0.2, 0.3)  # the thresholds scripts/report_drop_static.py reports
NEEDLE_AT, CUT_AT, N_FRAMES = 15, 30, 40


def naive_rule(codes: np.ndarray, thresh: float) -> list[int]:
    """The rule as the issue states it, in plain Python (the oracle)."""
    rows = [list(c.reshape(-1)) for c in codes]
    kept = [0]
    for i in range(1, len(rows)):
        ref = rows[kept[-1]]
        changed = sum(a != b for a, b in zip(rows[i], ref))
        if changed / len(ref) >= thresh:
            kept.append(i)
    return kept


def test_rule_thresholds_boundary_and_last_kept_reference():
    # 4 positions; each frame changes one more position of frame 0 (a slow drift), then a copy.
    codes = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    codes = np.concatenate([codes, codes[-1:]]).reshape(6, 2, 2)  # [F, h, w]
    assert frame_differences(codes).tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert drop_static(codes, 0.0).kept.tolist() == [0, 1, 2, 3, 4, 5]  # 0 keeps everything
    assert drop_static(codes, 0.25).kept.tolist() == [0, 1, 2, 3, 4]  # exactly THRESH: kept
    # Just above 0.25 every step is "static" against the previous frame, but the drift against
    # the LAST KEPT frame adds up: frame 2 differs from frame 0 in 2 of 4 positions.
    r = drop_static(codes, math.nextafter(0.25, 1.0))
    assert r.kept.tolist() == [0, 2, 4] and r.dropped.tolist() == [1, 3, 5]
    assert drop_static(codes, 0.5).kept.tolist() == [0, 2, 4]
    assert drop_static(codes, 0.75).kept.tolist() == [0, 3]
    assert drop_static(codes, 1.0).kept.tolist() == [0, 4]  # only a change in every position
    assert drop_static(codes[:1], 1.0).kept.tolist() == [0]  # the first frame is always kept
    assert drop_static(codes[:0], 0.5).n_frames == 0
    rng = np.random.default_rng(0)  # noisy codes: the vectorised rule against the plain one
    noisy = np.cumsum(rng.random((60, 3, 3)) < 0.1, axis=0) % 5
    for t in (0.0, 1 / 9, 0.2, 2 / 9, 0.5, 1.0):
        r = drop_static(noisy, t)
        assert r.kept.tolist() == naive_rule(noisy, t)
        assert sorted([*r.kept, *r.dropped]) == list(range(60))
    for bad in (-0.01, 1.01, float("nan"), float("inf"), "x", None):
        with pytest.raises(LwmError, match="--drop-static must be") as e:
            check_threshold(bad)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def needle_video(tmp_path_factory):
    """40 frames: a static textured scene A, the eval's red-square needle at frame 15, scene A
    again, and a cut to a static scene B at frame 30; plus a tiny VQGAN checkpoint."""
    root = tmp_path_factory.mktemp("drop_static")
    rng = np.random.default_rng(0)
    scene_a, scene_b = (
        np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)
        for _ in range(2)
    )
    needle = make_needle("colour", 0, RES).image

    def frame(i, h, w):
        return needle if i == NEEDLE_AT else (scene_a if i < CUT_AT else scene_b)

    video = write_synthetic(root / "needle.mp4", N_FRAMES, fps=10, h=RES, w=RES, frame_fn=frame)
    # The eval's haystack: the same scenes without a needle (20 frames of A, 10 of B).
    scenes = lambda i, h, w: scene_a if i < 20 else scene_b  # noqa: E731
    hay = write_synthetic(root / "haystack.mp4", 30, fps=10, h=RES, w=RES, frame_fn=scenes)
    save_tiny_vqgan(root / "vqgan")
    return root, video, hay


def _tokenize(capsys, root, video, out, *extra):
    argv = ["video", "tokenize", "--input", str(video), "--out", str(out)]
    rc = main([*argv, "--vqgan", str(root / "vqgan"), "--no-progress", *extra])
    return rc, *capsys.readouterr()


def test_bad_threshold_is_a_one_line_error_and_writes_nothing(needle_video, tmp_path, capsys):
    root, video, hay = needle_video
    out = tmp_path / "codes.jsonl"
    for bad in ("1.5", "-0.1", "nan"):
        rc, stdout, err = _tokenize(capsys, root, video, out, "--drop-static", bad)
        assert rc == 2 and "--drop-static must be in [0, 1]" in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc, _, _ = _tokenize(capsys, root, video, out)  # an earlier output stays as it was
    before = out.read_bytes()
    rc, _, err = _tokenize(capsys, root, video, out, "--overwrite", "--drop-static", "2")
    assert rc == 2 and out.read_bytes() == before


def test_needle_survives_and_static_frames_go_through_the_vqgan(needle_video, tmp_path, capsys):
    root, video, hay = needle_video
    full_out = tmp_path / "full.jsonl"
    assert _tokenize(capsys, root, video, full_out)[0] == 0
    full = json.loads(full_out.read_text())
    assert full["n_frames"] == N_FRAMES and "dropped_timestamps" not in full
    codes = np.asarray(full["vision"]).reshape(N_FRAMES, TPF + 1)[:, :TPF]
    for t in THRESHOLDS:
        out = tmp_path / f"drop_{t}.jsonl"
        assert _tokenize(capsys, root, video, out, "--drop-static", str(t))[0] == 0
        rec = json.loads(out.read_text())
        kept = naive_rule(codes, t)  # the oracle on the codes of every frame
        assert rec["drop_static"] == t and rec["n_frames"] == len(kept)
        assert rec["tokens_per_frame"] == TPF and len(rec["vision"]) == len(kept) * (TPF + 1)
        assert rec["vision"][-1] == 8193 and rec["vision"][TPF] == (8192 if len(kept) > 1 else 8193)
        want = np.concatenate([codes[kept], np.full((len(kept), 1), 8192)], 1).reshape(-1)
        assert rec["vision"][:-1] == want.tolist()[:-1]
        assert rec["timestamps"] == [full["timestamps"][i] for i in kept]
        assert sorted(rec["timestamps"] + rec["dropped_timestamps"]) == full["timestamps"]
        # The needle survives on its own merit, the frame after it (scene A again) differs
        # from it, and the static stretches collapse to their first frame.
        assert {0, NEEDLE_AT, NEEDLE_AT + 1, CUT_AT} <= set(kept)
        # x264 lets the static frames after a sharp change drift by a code or two of 16 (THRESH
        # 0.05 keeps 7 of them, 0.1 one): nearly all static frames go, all at 0.2 and above.
        static = {*range(1, NEEDLE_AT), *range(NEEDLE_AT + 2, N_FRAMES)} - {CUT_AT}
        assert len(static & set(kept)) <= (1 if t < 0.2 else 0)
    # Resume is unchanged: a done input is not redone.
    rc, stdout, _ = _tokenize(capsys, root, video, out, "--drop-static", "0.3", "--resume")
    assert rc == 0 and "already there" in stdout and len(out.read_text().splitlines()) == 1


def test_video_needle_eval_drops_static_haystack_frames(needle_video, tmp_path):
    from lwm.data.tokenizer import train_tokenizer
    from lwm.evals.video_haystack import HaystackCodes
    from lwm.evals.video_needle import evaluate_video_needles, run_video_needle_eval
    from lwm.evals.video_needle_prompt import VideoNeedleEval
    from lwm.evals.video_needle_task import VideoNeedleSpec
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    root, video, hay = needle_video
    words = ["what", "colour", "is", "the", "square", "none", *COLOURS]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 9)) for _ in range(300)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    tok = train_tokenizer([tmp_path / "corpus.txt"], 300, tmp_path / "tok.model")
    spec = VideoNeedleSpec(haystack=(str(hay),), fps=10.0)  # static scene A, then B
    encode = make_encode_fn(load_vqgan(root / "vqgan"))
    codes = HaystackCodes(encode, spec, resolution=RES, eof_id=256, eov_id=257, batch_size=8)
    plain = VideoNeedleEval(spec, tok, resolution=RES, tokens_per_frame=TPF)
    ev = VideoNeedleEval(spec, tok, resolution=RES, tokens_per_frame=TPF, drop_static=0.15)
    for job in (Job(24, 0.5, 0), Job(24, 1.0, 1), Job(12, 0.0, 2)):
        task = ev.task(job)
        full, dropped = plain.prompt(task, codes), ev.prompt(task, codes)
        video_codes = codes.video_codes(task)
        kept = naive_rule(video_codes, 0.15)
        assert dropped.kept_frames == len(kept) < job.length
        start = dropped.vision_mask.index(True)
        want = [t for i in kept for t in [*video_codes[i], 256]]
        assert dropped.tokens[start : start + len(want) - 1] == want[:-1]
        assert full.vision_tokens == job.length * (TPF + 1)
        assert len(dropped.tokens) == len(full.tokens) - (job.length - len(kept)) * (TPF + 1)
        needle = codes.needle_codes(task.needle).tolist()
        if dropped.needle_token_offset >= 0:
            at = dropped.needle_token_offset
            assert dropped.tokens[at : at + TPF] == needle
        else:  # dropped: no frame of the prompt is the needle's
            assert not any(video_codes[i].tolist() == needle for i in kept)

    needles = [make_needle("colour", i, RES) for i in range(len(COLOURS))]

    def oracle(prompts, max_new_tokens, vision_masks):
        """Reads the needle from the prompt's vision codes: names every needle whose codes are
        in the video ('none' if none is)."""
        out = []
        for tokens, mask in zip(prompts, vision_masks):
            frames = np.asarray(tokens)[np.asarray(mask)].reshape(-1, TPF + 1)[:, :TPF]
            seen = [n.label for n in needles if (frames == codes.needle_codes(n)).all(1).any()]
            out.append(tok.encode(" ".join(seen) or "none"))
        return out

    grid = dict(lengths=[24], depths=[0.0, 0.5, 1.0], samples=2, progress=False)
    recs = run_video_needle_eval(oracle, ev, codes, out_dir=tmp_path / "r", **grid)
    assert all(r["kept_frames"] < 24 for r in recs)
    for r in recs:  # correct exactly when the needle survived (the oracle reads only codes)
        assert r["correct"] == r["needle_kept"]
    assert any(r["needle_kept"] for r in recs)
    # Bad options fail before anything is loaded or written.
    bad = dict(lengths=[24], depths=[0.0], samples=1, out_dir=tmp_path / "bad")
    with pytest.raises(LwmError, match="--drop-static must be in"):
        evaluate_video_needles("nowhere", "nowhere", tok, spec, drop_static=1.5, **bad)
    with pytest.raises(LwmError, match="unknown kv_dtype"):
        evaluate_video_needles("nowhere", "nowhere", tok, spec, kv_dtype="int4", **bad)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(LwmError, match="different eval"):  # another threshold: not resumed
        other = VideoNeedleEval(spec, tok, resolution=RES, tokens_per_frame=TPF, drop_static=0.3)
        run_video_needle_eval(oracle, other, codes, out_dir=tmp_path / "r", **grid)
