"""Shared fixtures and helpers of the bad-input battery (tests/test_bad_inputs_*.py): a tree
checksum, the one-line-error check, tiny checkpoints and text assets (session-scoped: built once
for all the battery's files)."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil

import numpy as np
import pytest
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


# A progress bar's text: "desc: 40%|####  | 2/5 [00:01<00:02, 1.2 it/s]" or, without a total,
# "desc: 0 examples [00:00, ? examples/s]"; and tqdm's cursor-up escape.
_TQDM = re.compile(
    r"[^\n\r]*\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\]|[^\n\r]*: \d+ \w+ \[\d\d:\d\d[^\]]*\]|\x1b\[A"
)


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


TINY = ModelConfig(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    max_sequence_length=64,
)


@pytest.fixture(scope="session")
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


def generate_args(ckpt, *extra) -> list[str]:
    args = ["generate", "--checkpoint", str(ckpt), "--prompt-ids", "1,2,3"]
    return [*args, "--max-new-tokens", "4", *extra]


def damage(step_dir: pathlib.Path, how: str) -> None:
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


def run_out(argv) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="session")
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
