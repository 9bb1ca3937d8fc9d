"""`lwm chat --video DIR` (issue 28, case 8): a directory is not "no such file" but one line
saying it is a directory and what is expected, before any weights are read."""

from __future__ import annotations

import pytest

from lwm.cli.main import main
from lwm.errors import LwmError
from lwm.video.reader import probe, read_frames

EXPECTED = "is a directory; expected one video or image file (e.g. .mp4, .webm, .jpg, .png)"


def test_chat_video_directory_is_one_line(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").write_bytes(b"")
    missing = tmp_path / "missing"  # never read: the video is checked first
    argv = ["chat", "--checkpoint", str(missing), "--vqgan", str(missing)]
    rc = main([*argv, "--video", str(clips), "--question", "what?"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err == f"lwm chat: error: {clips}: {EXPECTED}\n"
    rc = main([*argv, "--video", str(tmp_path / "nope.mp4"), "--question", "what?"])
    assert capsys.readouterr().err == f"lwm chat: error: {tmp_path / 'nope.mp4'}: no such file\n"
    assert rc == 2


@pytest.mark.parametrize("name", ["clips", "frames.png"])  # an image suffix takes another path
def test_reader_refuses_a_directory(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    for read in (probe, read_frames):
        with pytest.raises(LwmError) as e:
            read(folder)
        assert str(e.value) == f"{folder}: {EXPECTED}"
