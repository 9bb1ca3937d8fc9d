"""`lwm` command line: one subcommand module per concept, each exposing `add_parser(subparsers)`.

Subcommand modules must stay cheap to import (no jax at module level) so `lwm --help` is fast;
each sets `func` on its parser, called with the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from lwm.config import split_config_overrides
from lwm.errors import LwmError

# Modules listed here are registered if they exist; later issues add theirs.
SUBCOMMAND_MODULES = (
    "lwm.cli.info",
    "lwm.cli.convert",
    "lwm.cli.train",
    "lwm.cli.plan",
    "lwm.cli.tokenizer",
    "lwm.cli.data",
    "lwm.cli.vqgan",
    "lwm.cli.video",
    "lwm.cli.generate",
    "lwm.cli.chat",
    "lwm.cli.prefill",
    "lwm.cli.generate_video",
    "lwm.cli.needle",
    "lwm.cli.video_needle",
    "lwm.cli.perplexity",
    "lwm.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwm", description="Million-token world models in JAX (LWM-style)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, overrides = split_config_overrides(argv)
    except LwmError as e:
        print(f"lwm: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config_overrides = overrides
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "kv_dtype", None) is not None:  # before the command touches anything
            from lwm.cache.kv_dtypes import check_kv_dtype

            check_kv_dtype(args.kv_dtype)
        return int(args.func(args) or 0)
    except LwmError as e:
        print(f"lwm {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except OSError as e:  # a full disk, a quota, a permission anywhere: one line, not a traceback
        from lwm.write_errors import RERUN_TO_RESUME, write_failed

        # A write to an open file names no path: the command's output folder, when it has one.
        workdir = getattr(args, "workdir", None)
        folder = workdir or getattr(args, "out", None)
        then = RERUN_TO_RESUME if isinstance(workdir, str) else ""
        if e.filename is None and isinstance(folder, str):
            err = write_failed(e, folder, then=then, verb="under")
        else:
            err = write_failed(e, None, then=then, verb="")
        if err is None:
            raise
        print(f"lwm {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"lwm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
