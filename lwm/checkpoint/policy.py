"""What a restore does with a damaged newest step: fall back (default) or fail (`--strict`).

Kept free of jax/orbax imports so CLI parsers can add the flag cheaply.
"""

from __future__ import annotations

import argparse

STRICT_HELP = (
    "fail when the newest checkpoint step is unreadable instead of falling back to the newest "
    "readable one (the fallback is reported in one line; nothing is deleted)"
)


def add_strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
