"""`lwm demo --seed N`: the seed changes the generated data and the init, never the eval's
questions; the same seed regenerates the same bytes; a work directory keeps its seed."""

import json
import pathlib

import numpy as np
import pytest

from lwm.cli.main import main as lwm_main
from lwm.config import load_config
from lwm.demo.phases import DemoPaths
from lwm.demo.seed import apply_seed

DATA_FILES = ("corpus.txt", "tokenizer.model", "tasks.jsonl")


def _text_config(seed=None):
    config = load_config("demo_smoke", [] if seed is None else [f"demo.seed={seed}"])
    apply_seed(config)
    return config


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """The smoke demo's data for seeds 0, 1 and 0 again, in three work directories."""
    from lwm.demo.pipeline import prepare_data

    root = tmp_path_factory.mktemp("demo_seed")
    out = {}
    for name, seed in (("a", 0), ("b", 1), ("a2", 0)):
        paths = DemoPaths(root / name)
        dataset = prepare_data(_text_config(seed), paths)
        out[name] = (paths, dataset)
    return out


def _files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def _dataset(directory):
    """The dataset's files, its metadata without the paths it records (provenance; the
    tokenizer's hash stays)."""
    files = _files(directory)
    meta = json.loads(files.pop(pathlib.Path("metadata.json")))
    assert meta.pop("inputs") == [str(directory.parent / "tasks.jsonl")]
    assert meta.pop("tokenizer") == str(directory.parent / "tokenizer.model")
    return files, meta


def test_same_seed_same_bytes_other_seed_other_data(text_data):
    (a, ds_a), (b, ds_b), (a2, ds_a2) = text_data["a"], text_data["b"], text_data["a2"]
    for name in DATA_FILES:
        assert (a.data / name).read_bytes() == (a2.data / name).read_bytes(), name
        assert (a.data / name).read_bytes() != (b.data / name).read_bytes(), name
    assert _dataset(ds_a) == _dataset(ds_a2) != _dataset(ds_b)
    tasks_a = (a.data / "tasks.jsonl").read_text().splitlines()
    tasks_b = (b.data / "tasks.jsonl").read_text().splitlines()
    assert len(tasks_a) == len(tasks_b) and not set(tasks_a) & set(tasks_b)


def test_eval_questions_do_not_depend_on_the_seed(text_data):
    """Both seeds' evals ask the same grid: same jobs and sample seeds, same needles (keys,
    numbers, depth), same question and expected answer; only the tokenizer that measures the
    haystack differs. No training task of either seed is an eval sample."""
    from lwm.data.needles import Haystack
    from lwm.data.tokenizer import load_tokenizer
    from lwm.demo.pipeline import eval_sample_seeds, eval_specs
    from lwm.evals.needle import grid_jobs, make_task, sample_seed

    def questions(seed, paths):
        d = _text_config(seed).demo
        tok = load_tokenizer(paths.data / "tokenizer.model")
        out = []
        for name, (spec, lengths, depths, samples) in eval_specs(d).items():
            for job in grid_jobs(lengths, depths, samples):
                task = make_task(tok, Haystack(spec.haystack), spec, job)
                needles = [(n.key, n.value, n.depth, n.queried) for n in task.needles]
                out.append((name, job, sample_seed(spec, job), needles, task.question, task.answer))
        return out

    qa, qb = questions(0, text_data["a"][0]), questions(1, text_data["b"][0])
    assert len(qa) == 6 and qa == qb
    assert eval_sample_seeds(_text_config(0).demo) == eval_sample_seeds(_text_config(1).demo)
    # The eval's needle sentences never appear in any training record of either seed.
    for _, _, _, needles, _, _ in qa:
        sentences = [f"The special magic {k} number is: {v}." for k, v, _, _ in needles]
        for run in ("a", "b"):
            text = (text_data[run][0].data / "tasks.jsonl").read_text()
            assert not any(s in text for s in sentences)


def test_seed_sets_init_and_training_seed():
    from lwm.sharding import make_mesh
    from lwm.training.run_spec import parse_run
    from lwm.training.train_state import init_params, model_def

    mesh = make_mesh(dict(dp=1, fsdp=8, tp=1, sp=1))
    params = []
    for seed in (0, 1):
        spec = parse_run(_text_config(seed))
        assert spec.train.seed == seed
        params.append(init_params(model_def(spec.model, mesh), spec.train.seed, mesh))
    embed = [np.asarray(p["embed"]["text"]) for p in params]
    assert embed[0].shape == embed[1].shape and not np.array_equal(*embed)
    video = load_config("demo_video_smoke", ["demo.seed=5"])
    assert apply_seed(video) == 5 and video.train.seed == 5 and video.vqgan_train.seed == 5


def test_video_training_questions_change_eval_grid_stays():
    """Video: the seed changes the training questions, never the eval's; no training question
    of any seed is an eval sample (the eval_seeds exclusion)."""
    from lwm.demo.video_pipeline import eval_seeds, needle_spec, training_jobs
    from lwm.evals.needle import sample_seed

    def jobs_and_eval(seed, **extra):
        config = load_config("demo_video_smoke", [f"demo.seed={seed}"])
        d = config.demo
        with d.unlocked():
            d.update(extra)
        jobs, skipped = training_jobs(d)
        spec = needle_spec(d, pathlib.Path("."), d.train_seed)
        return jobs, {sample_seed(spec, j) for j in jobs}, eval_seeds(d), skipped

    j0, s0, e0, _ = jobs_and_eval(0)
    j1, s1, e1, _ = jobs_and_eval(1)
    assert e0 == e1 and len(e0) == 4
    assert j0 != j1 and s0 != s1 and len(j0) == len(j1) == 18
    assert not (s0 | s1) & e0
    assert jobs_and_eval(0)[0] == j0
    # A grid that covers the training questions' lengths, depths (to 1e-4) and indices under the
    # same base seed: its samples are skipped, the rest still made.
    jobs, seeds, evals, skipped = jobs_and_eval(
        0, train_seed=0, eval_lengths=[2, 3, 4], eval_depths="0:1:10001", eval_samples=18
    )
    assert skipped > 0 and len(jobs) == 18 and not seeds & evals


def test_demo_workdir_keeps_its_seed(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "demo.json").write_text(json.dumps({"demo": "text", "seed": 0}))
    before = _files(wd)
    for extra in (["--seed", "1"], ["--config.demo.seed=1"]):
        assert lwm_main(["demo", "--config", "demo_smoke", "--workdir", str(wd), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "seed 0, not 1" in err[0] and "fresh --workdir" in err[0]
    assert lwm_main(["demo", "--video", "--workdir", str(wd)]) == 2
    assert "holds a `lwm demo` run" in capsys.readouterr().err
    # A work directory from before seeds were recorded holds seed 0's run.
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    assert lwm_main(["demo", "--config", "demo_smoke", "--workdir", str(old), "--seed", "2"]) == 2
    assert "before seeds were recorded" in capsys.readouterr().err
    assert _files(wd) == before and list(old.rglob("*")) == [old / "data"]
    # Flags that would fight the seed are refused before any work.
    args = ["demo", "--config", "demo_smoke", "--workdir", str(tmp_path / "new")]
    assert lwm_main([*args, "--config.train.seed=3"]) == 2
    assert "use --seed N" in capsys.readouterr().err
    assert lwm_main([*args, "--seed", "1", "--config.demo.seed=2"]) == 2
    assert "disagree" in capsys.readouterr().err
    assert lwm_main([*args, "--seed", "-1"]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    assert lwm_main(["demo", "--workdir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_training_tasks_skip_excluded_seeds(text_data, monkeypatch):
    """`needle_records(exclude_seeds=...)` never builds a task from an excluded seed (the demo
    passes the eval's sample seeds)."""
    import lwm.demo.data as demo_data
    from lwm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(text_data["a"][0].data / "tokenizer.model")
    real, seen = demo_data.make_needle_task, []

    def spy(*args, **kw):
        seen.append(kw["seed"])
        return real(*args, **kw)

    monkeypatch.setattr(demo_data, "make_needle_task", spy)
    buckets = [demo_data.TaskBucket(96, 128, 8)]
    kw = dict(max_keys=2, max_queries=1, seed=4)
    demo_data.needle_records(tok, buckets, **kw)
    first = set(seen)
    seen.clear()
    recs = demo_data.needle_records(tok, buckets, exclude_seeds=first, **kw)
    assert len(recs) == 8 and seen and not set(seen) & first
