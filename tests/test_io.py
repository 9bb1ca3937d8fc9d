"""lwm.io: atomic writes leave the old file or nothing on error, strict JSON, shareable modes."""

import json
import math
import os
import stat

import numpy as np
import pytest

from lwm import io


def test_write_json_is_strict_and_shareable(tmp_path):
    path = io.write_json(
        tmp_path / "a.json", {"x": np.float32(1.5), "nan": math.nan, 1: [np.int64(2)]}
    )
    assert json.loads(path.read_text()) == {"x": 1.5, "nan": None, "1": [2]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    io.write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_savefig_keeps_the_format_of_the_target(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = io.savefig(fig, tmp_path / "p.png", dpi=20)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_str_keys_stringifies_nested_keys():
    assert io.str_keys({0: {1: "a"}, "b": 2}) == {"0": {"1": "a"}, "b": 2}


def test_video_writer_is_atomic(tmp_path):
    """A frame of the wrong shape mid-stream: no video and no temporary left; a good write is
    a readable, shareable file."""
    from lwm.errors import LwmError
    from lwm.video.reader import read_frames
    from lwm.video.writer import write_video

    frames = [np.full((16, 16, 3), 10 * i, np.uint8) for i in range(4)]
    with pytest.raises(LwmError, match="frame 2 is"):
        write_video(tmp_path / "v.mp4", [*frames[:2], np.zeros((8, 8, 3), np.uint8)], fps=4)
    assert list(tmp_path.iterdir()) == []
    assert write_video(tmp_path / "v.mp4", frames, fps=4) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    assert stat.S_IMODE(os.stat(tmp_path / "v.mp4").st_mode) == 0o644
    assert len(list(read_frames(tmp_path / "v.mp4"))) == 4
