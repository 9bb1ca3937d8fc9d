"""What a video read does with a truncated file: fail (default) or warn (`--allow-short`).

Kept free of PyAV imports so CLI parsers can add the flag cheaply.
"""

from __future__ import annotations

import argparse

ALLOW_SHORT_HELP = (
    "accept a truncated video (fewer decodable frames than its header claims for the span) with "
    "a warning, repeating its last frame, instead of failing"
)


def add_allow_short_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-short", action="store_true", help=ALLOW_SHORT_HELP)
