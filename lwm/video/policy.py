"""What a video read does with a truncated file: fail (default) or warn (`--allow-short`).

Kept free of PyAV imports so CLI parsers can add the flag cheaply.
"""

from __future__ import annotations

import argparse

ALLOW_SHORT_HELP = (
    "accept a truncated video (fewer decodable frames than its header claims for the span) with "
    "a warning, repeating its last frame, instead of failing"
)

allow_short_default = False  # what `read_frames(allow_short=None)` uses; the CLI sets it


def add_allow_short_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-short", action="store_true", help=ALLOW_SHORT_HELP)


def set_allow_short_default(allow: bool) -> None:
    global allow_short_default
    allow_short_default = bool(allow)
