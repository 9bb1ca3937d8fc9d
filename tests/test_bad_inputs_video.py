"""Bad-input battery, videos: a truncated but readable clip is refused (or allowed with a
warning) by `video tokenize`, `chat` and `video-needle`; a failed tokenize leaves nothing."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from bad_input_fixtures import (
    TINY,
    digest,
    one_line_error,
    text_assets,
)
from flax import nnx
from model_fixtures import random_model

from lwm.cli.main import main
from lwm.models.io import save_model
from lwm.models.transformer import Transformer

__all__ = ["text_assets"]  # fixtures in use


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
