"""The bad-input battery: each case gets one line naming the problem, a non-zero exit (or the
documented fallback), and nothing written or changed (checksums of the files involved before and
after). Tiny models; the CLI runs in-process except where signals need a process of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from compile_cache import persistent_compile_cache
from flax import nnx
from model_fixtures import random_model

from lwm.cli.main import main
from lwm.models.config import ModelConfig
from lwm.models.io import save_model
from lwm.models.transformer import Transformer

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN_FAST = [
    "--config.train.progress_bar=False",
    "--config.train.peak_flops=1e12",
    "--config.train.log_every=1",
    "--config.model.num_layers=1",  # smaller than train_debug: less to compile
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
]


def digest(path: pathlib.Path) -> str:
    """A checksum of a file or a whole tree (relative names, modes, contents): equal digests
    mean nothing was written, removed or changed."""
    path = pathlib.Path(path)
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*"))
    for p in files:
        rel = p.relative_to(path) if p != path else pathlib.Path(p.name)
        h.update(f"{rel}:{p.stat().st_mode:o}\n".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


_TQDM = re.compile(r"[^\n]*\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\]")  # a progress bar's text


def one_line_error(capsys, code: int, rc: int, *needles: str) -> str:
    """Asserts exit `code` and a single stderr line holding every needle (progress bars, which
    go to stderr too, aside); returns the line."""
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [x for x in _TQDM.sub("", err).splitlines() if x.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# -- damaged checkpoints ---------------------------------------------------------------------

TINY = ModelConfig(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_sequence_length=64,
)


@pytest.fixture(scope="module")
def two_step_models(tmp_path_factory):
    """A model checkpoint with steps 3 and 6 (different weights) and the greedy ids each gives."""
    root = tmp_path_factory.mktemp("ckpts")
    good = root / "good"
    m3 = random_model(lambda: Transformer(TINY, rngs=nnx.Rngs(0)), seed=3)
    m6 = random_model(lambda: Transformer(TINY, rngs=nnx.Rngs(0)), seed=6)
    save_model(good, m3, step=3)
    save_model(good, m6, step=6)
    only3 = root / "only3"
    save_model(only3, m3, step=3)
    return good, only3


def _generate(ckpt, *extra) -> list[str]:
    args = ["generate", "--checkpoint", str(ckpt), "--prompt-ids", "1,2,3"]
    return [*args, "--max-new-tokens", "4", *extra]


def _damage(step_dir: pathlib.Path, how: str) -> None:
    if how == "truncated data file":
        for f in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
    elif how == "metadata":
        shutil.rmtree(step_dir / "metadata")
    elif how == "state":
        shutil.rmtree(step_dir / "state")
    elif how == "state/_METADATA":
        (step_dir / "state" / "_METADATA").unlink()


DAMAGE = {
    "truncated data file": "OUT_OF_RANGE",
    "metadata": "metadata missing",
    "state": "state/ missing",
    "state/_METADATA": "state/_METADATA missing",
}


def _run_out(argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def step3_outputs(two_step_models, tmp_path_factory):
    """What the intact step-3-only checkpoint gives: greedy ids, and its HF export."""
    _, only3 = two_step_models
    hf = tmp_path_factory.mktemp("hf3") / "hf"
    _run_out(["convert", "to-hf", str(only3), str(hf)])
    return {
        "generate": _run_out(_generate(only3)),
        "to-hf": (hf / "model.safetensors").read_bytes(),
    }


# Every damage through `convert to-hf` (no compile: cheap), the worst one through `generate` too.
FALLBACK_CASES = [(how, "to-hf") for how in DAMAGE] + [("truncated data file", "generate")]


@pytest.mark.parametrize("how,command", FALLBACK_CASES)
def test_damaged_newest_step_falls_back(
    tmp_path, two_step_models, step3_outputs, capsys, how, command
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    _damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    hf = tmp_path / "hf"
    argv = _generate(ckpt) if command == "generate" else ["convert", "to-hf", str(ckpt), str(hf)]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("checkpoint step 6 unreadable (") and DAMAGE[how] in lines[0]
    assert lines[0].endswith("; using step 3")
    if command == "generate":
        assert captured.out == step3_outputs["generate"]  # step 3's weights answered
    else:
        assert (hf / "model.safetensors").read_bytes() == step3_outputs["to-hf"]
    assert digest(ckpt) == before  # nothing deleted or written


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_newest_step_strict_is_an_error(tmp_path, two_step_models, capsys, how):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    _damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    rc = main(_generate(ckpt, "--strict"))
    line = one_line_error(capsys, 2, rc, "checkpoint step 6", "unreadable", DAMAGE[how], "strict")
    assert "newest readable: step 3" in line
    assert capsys.readouterr().out == ""
    assert digest(ckpt) == before


def test_empty_folder_as_checkpoint(tmp_path):
    """Subprocess: the old failure was a traceback at interpreter shutdown, after the message."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "lwm.cli.main", *_perplexity_args(empty, tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"lwm perplexity: error: no checkpoint in {empty}"]
    assert list(empty.iterdir()) == [] and not (tmp_path / "out").exists()


def _perplexity_args(ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    return ["perplexity", "--checkpoint", str(ckpt), "--text", str(text), "--lengths", "8"] + [
        "--segment",
        "4",
        "--out",
        str(tmp_path / "out"),
    ]


# -- training: resume fallback, signals, bad flags ---------------------------------------------


def _train_args(wd, *extra):
    return ["train", "--config", "train_debug", "--workdir", str(wd), *TRAIN_FAST, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, compile_cache):
    """train_debug run to step 4 with checkpoints at 2 and 4 (in-process)."""
    wd = tmp_path_factory.mktemp("train") / "wd"
    assert main(_train_args(wd, "--max-steps", "4", "--config.train.save_every=2")) == 0
    return wd


def test_train_resume_falls_back_past_truncated_step(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    _damage(wd / "checkpoints" / "4", "truncated data file")
    damaged = digest(wd / "checkpoints" / "4")
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "5", "--config.train.save_every=2"))
    err = capsys.readouterr().err
    assert rc == 0, err
    notes = [x for x in err.splitlines() if "unreadable" in x]
    assert notes[0].startswith("checkpoint step 4 unreadable (OUT_OF_RANGE")
    assert notes[0].endswith("; using step 2")
    assert "moved it to 4.unreadable" in notes[1]
    # The damaged files are kept, renamed; training redid steps 3-4 and went on to 5.
    assert digest(wd / "checkpoints" / "4.unreadable") == damaged
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-2:] == [4, 5]
    losses = {r["step"]: r["loss"] for r in map(json.loads, open(wd / "metrics.jsonl"))}
    ref = {r["step"]: r["loss"] for r in map(json.loads, open(trained / "metrics.jsonl"))}
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert losses[3] == ref[3] and losses[4] == ref[4]  # redone exactly


def test_train_resume_strict_refuses_truncated_step(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    _damage(wd / "checkpoints" / "4", "truncated data file")
    before = digest(wd)
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "5", "--strict"))
    one_line_error(capsys, 2, rc, "checkpoint step 4", "unreadable", "newest readable: step 2")
    assert digest(wd) == before


def test_max_steps_negative_refused(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, "--max-steps", "-1"))
    one_line_error(capsys, 2, rc, "--max-steps must be >= 1, got -1")
    assert not wd.exists()


def test_resume_with_other_seq_len_refused(tmp_path, trained, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    before = digest(wd)
    capsys.readouterr()
    rc = main(_train_args(wd, "--max-steps", "6", "--config.train.seq_len=64"))
    one_line_error(capsys, 2, rc, "seq_len 64", "seq_len 128", "step 4")  # was 128
    assert digest(wd) == before


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache shared by this module's training runs, in this process and
    in the signal tests' subprocesses (each train step is compiled once)."""
    with persistent_compile_cache(str(tmp_path_factory.mktemp("xla_cache"))) as path:
        yield path


@pytest.fixture(scope="module")
def subprocess_env(compile_cache):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_resumable(tmp_path, trained, subprocess_env, sig):
    """SIGTERM and Ctrl-C both save the current step and exit 75 ("interrupted, resumable")."""
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)  # resumes at step 5: no periodic save before 20
    log_path = tmp_path / "err.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lwm.cli.main",
                *_train_args(wd, "--config.train.save_every=100"),
            ],
            cwd=REPO,
            env=subprocess_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        t0 = time.time()
        while _last_logged(wd) < 6:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.time() - t0 < 240, "no progress"
            time.sleep(0.05)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    err = log_path.read_text()
    assert rc == 75, err[-2000:]
    name = signal.Signals(sig).name
    last = [x for x in err.strip().splitlines() if x.strip()][-1]
    assert last.startswith(f"lwm train: interrupted by {name} at step ")
    assert "checkpoint saved, resumable (exit 75" in last
    stopped = int(last.split(" at step ")[1].split(":")[0])
    assert 6 <= stopped < 20 and _last_logged(wd) == stopped
    assert (wd / "checkpoints" / str(stopped)).is_dir()


def _last_logged(wd) -> int:
    path = wd / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")]
    return max(steps, default=0)


def test_train_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "75 interrupted by SIGTERM or SIGINT" in out and "resumable" in out


# -- silent wrong results --------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_assets(tmp_path_factory):
    """A 300-piece tokenizer, a model of that vocabulary, one of 64 tokens (too small), a text."""
    from lwm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("text")
    words = "the a bike rider road video frame person rides fast slow red blue what who is".split()
    rng = np.random.default_rng(0)
    text = root / "corpus.txt"
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(300)) + "\n")
    tok = train_tokenizer([text], 300, root / "tok.model")
    cfg = TINY.replace(vocab_size=tok.vocab_size, max_sequence_length=512)
    fits = root / "fits"
    save_model(fits, random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    small = root / "small"
    small_cfg = TINY.replace(max_sequence_length=512)
    save_model(small, random_model(lambda: Transformer(small_cfg, rngs=nnx.Rngs(0))))
    nan = root / "nan"
    save_model(nan, random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), std=float("nan")))
    return dict(root=root, tok=root / "tok.model", text=text, fits=fits, small=small, nan=nan)


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
    rc = main(_generate(two_step_models[1])[:-1] + ["100"])
    err = capsys.readouterr().err.strip()
    assert rc == 0
    assert err == (
        "lwm generate: note: --max-new-tokens 100 cut to 61: the prompt has 3 tokens and "
        "max_sequence_length is 64"
    )


def test_from_hf_refuses_disagreeing_rope_spellings(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rope_scaling": {"type": "linear", "factor": 4.0},
    }
    (hf / "config.json").write_text(json.dumps(config))
    before = digest(tmp_path)
    rc = main(["convert", "from-hf", str(hf), str(tmp_path / "out")])
    one_line_error(
        capsys,
        2,
        rc,
        "config.json's RoPE spellings disagree (rope_parameters: plain RoPE, theta 10000; "
        "rope_scaling: linear x4, theta 10000)",
    )
    assert digest(tmp_path) == before


def test_video_tokenize_error_leaves_no_empty_out(tmp_path):
    from lwm.errors import LwmError
    from lwm.video.tokenize import tokenize_files

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500)
    out = tmp_path / "out.jsonl"
    kw = dict(resolution=16, codebook_size=16, show_progress=False, frames=2)
    with pytest.raises(LwmError, match="broken.mp4"):
        tokenize_files(lambda x: x, [bad], out, **kw)
    assert not out.exists()  # nothing left to block the rerun
    out.write_text('{"source": "kept"}\n')
    before = digest(out)
    with pytest.raises(LwmError, match="broken.mp4"):
        tokenize_files(lambda x: x, [bad], out, overwrite=True, **kw)
    assert digest(out) == before  # --overwrite that fails keeps the old file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_shared_files_are_0644(tmp_path, text_assets):
    from lwm.data.tokenizer import train_tokenizer

    tok = train_tokenizer([text_assets["text"]], 300, tmp_path / "t.model")
    assert (tok.path.stat().st_mode & 0o777) == 0o644
    assert main(["convert", "to-hf", str(text_assets["fits"]), str(tmp_path / "hf")]) == 0
    for f in (tmp_path / "hf").iterdir():
        assert (f.stat().st_mode & 0o777) == 0o644, f


# -- one line instead of a traceback -----------------------------------------------------------

BAD_JSONL = {
    "empty": (b"", [], "no examples in", "(empty: no records)"),
    "non-UTF-8": (b'\xff\xfe{"text": "a"}\n', [], ".jsonl:1: not UTF-8 (byte 0xff at offset 0)"),
    "non-UTF-8 --skip-bad": (
        b'\xff{"text": "a"}\n{"other": 1}\n',
        ["--skip-bad"],
        "no examples in",
        "all 2 non-empty lines bad, skipped by --skip-bad",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_data_build_bad_jsonl(text_assets, tmp_path, capsys, case):
    data, extra, *needles = BAD_JSONL[case]
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    before = digest(tmp_path)
    out = tmp_path / "ds"
    args = ["data", "build", "--input", str(src), "--tokenizer", str(text_assets["tok"])]
    rc = main([*args, "--out", str(out), *extra])
    one_line_error(capsys, 2, rc, "lwm data: error:", *needles)
    assert digest(tmp_path) == before  # no dataset, no temporary folder


def test_non_literal_override_of_none_field(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, "--config.model.attention.causal_block_size=abc"))
    one_line_error(
        capsys,
        2,
        rc,
        "--config.model.attention.causal_block_size: expected int | None, got 'abc'",
    )
    assert not wd.exists()


def test_error_hints_spell_the_flag(two_step_models, capsys):
    ids = ",".join(["1"] * 70)
    rc = main(["generate", "--checkpoint", str(two_step_models[1]), "--prompt-ids", ids])
    one_line_error(capsys, 2, rc, "longer than the model's max_sequence_length 64", "--truncate")


def test_data_path_with_synthetic_source_refused(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc = main(_train_args(wd, f"--config.data.path={tmp_path}"))
    one_line_error(capsys, 2, rc, "data.source is 'synthetic'", "--config.data.source=dataset")
    assert not wd.exists()


# -- truncated but readable videos -------------------------------------------------------------

VQ = dict(
    name="vqgan_test",
    resolution=16,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    norm_groups=4,
    codebook_size=16,
    embed_dim=8,
)


def _truncated_mp4(path: pathlib.Path) -> pathlib.Path:
    """40 frames at 10 fps with the index up front (faststart), cut in half: the header still
    claims 4 s / 40 frames, 11 decode."""
    from fractions import Fraction

    import av
    from video_helpers import index_frame

    full = path.with_name("full.mp4")
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.options = {"crf": "10", "preset": "ultrafast", "g": "12"}
        for i in range(40):
            for p in s.encode(av.VideoFrame.from_ndarray(index_frame(i, 32, 32), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    full.unlink()
    return path


@pytest.fixture(scope="module")
def vision_assets(tmp_path_factory, text_assets):
    from lwm.checkpoint import Checkpointer
    from lwm.data.tokenizer import load_tokenizer
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan import VQGAN
    from lwm.video.vqgan_checkpoint import state_tree, vqgan_metadata

    root = tmp_path_factory.mktemp("vision")
    tok = load_tokenizer(text_assets["tok"])
    cfg = TINY.replace(
        vocab_size=tok.vocab_size,
        max_sequence_length=1024,
        vision_vocab_size=18,
        vision_eof_id=16,
        vision_eov_id=17,
    )
    ckpt = root / "vision_ckpt"
    save_model(ckpt, random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    shutil.copy(tok.path, ckpt / "tokenizer.model")
    vq_dir = root / "vqgan"
    vcfg = VQGANConfig(**VQ)
    with Checkpointer(vq_dir, async_save=False) as ck:
        vq = random_model(lambda: VQGAN(vcfg, rngs=nnx.Rngs(0)), std=0.1)
        ck.save(0, {"model": state_tree(vq)}, metadata=vqgan_metadata(vcfg), force=True)
    clips = root / "clips"
    clips.mkdir()
    video = _truncated_mp4(clips / "cut.mp4")
    return dict(ckpt=ckpt, vqgan=vq_dir, video=video, clips=clips)


SHORT = "cut.mp4: truncated video: 11 of the 40 frames its header claims for [0, 4)s decode"


def _video_cmd(kind, a, out):
    if kind == "video tokenize":
        return ["video", "tokenize", "--vqgan", str(a["vqgan"]), "--input", str(a["video"])] + [
            "--out",
            str(out / "codes.jsonl"),
            "--frames",
            "8",
            "--no-progress",
            "--eof-id",
            "16",
            "--eov-id",
            "17",
        ]
    if kind == "chat":
        args = ["chat", "--checkpoint", str(a["ckpt"]), "--vqgan", str(a["vqgan"])]
        return [*args, "--video", str(a["video"]), "--frames", "8", "--question", "what?"] + [
            "--max-new-tokens",
            "2",
        ]
    args = ["video-needle", "--checkpoint", str(a["ckpt"]), "--vqgan", str(a["vqgan"])]
    return [*args, "--haystack", str(a["clips"]), "--clip-frames", "8", "--lengths", "8"] + [
        "--depths",
        "0",
        "--out",
        str(out / "vn"),
        "--max-new-tokens",
        "2",
    ]


@pytest.mark.parametrize("kind", ["video tokenize", "chat", "video-needle"])
def test_truncated_video_refused(vision_assets, tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    before = digest(vision_assets["clips"])
    capsys.readouterr()
    rc = main(_video_cmd(kind, vision_assets, out))
    line = one_line_error(capsys, 2, rc, SHORT, "pass --allow-short")
    assert line.startswith(f"lwm {kind.split()[0]}: error: ")
    assert list(out.iterdir()) == []  # nothing written
    assert digest(vision_assets["clips"]) == before


def test_truncated_video_allowed_with_warning(vision_assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = main([*_video_cmd("video tokenize", vision_assets, out), "--allow-short"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0
    assert len(err) == 1 and "warning" in err[0] and SHORT in err[0] and "--allow-short" in err[0]
    (record,) = [json.loads(x) for x in (out / "codes.jsonl").read_text().splitlines()]
    assert record["n_frames"] == 8 and record["timestamps"][-1] == 1.0  # padded, but said so
