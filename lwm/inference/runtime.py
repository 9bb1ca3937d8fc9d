"""Shared plumbing of the inference commands: mesh, model, tokenizer, sampling flags, streaming."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from lwm.cache.kv_dtypes import KV_DTYPES
from lwm.checkpoint.policy import add_strict_arg
from lwm.errors import LwmError

if TYPE_CHECKING:
    from lwm.inference.sampling import EosIds

TOKENIZER_FILENAMES = ("tokenizer.json", "tokenizer.model")
"""What a checkpoint directory or workdir may hold, in order of preference."""


def add_model_args(p: argparse.ArgumentParser, *, template_help: str | None = None) -> None:
    """The model, tokenizer, mesh and prompt-template flags shared by the inference commands;
    `template_help` replaces the generic help of `--template` (chat's describes its layouts)."""
    p.add_argument("--checkpoint", required=True, help="lwm model checkpoint or training workdir")
    p.add_argument(
        "--tokenizer",
        help="a sentencepiece .model, a tokenizer.json or a directory (default: the one inside "
        "the checkpoint directory: tokenizer.json, else tokenizer.model)",
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="device mesh, e.g. 'sp=8' or 'dp=1,tp=2,sp=4' (default: one device)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (default: the checkpoint's)",
    )
    p.add_argument("--prefill-chunk", type=int, default=512, help="tokens per prefill step")
    add_kv_dtype_arg(p)
    p.add_argument(
        "--max-cache-len", type=int, default=None, help="fixed KV-cache capacity (default: auto)"
    )
    p.add_argument(
        "--template",
        default=None,
        help=template_help
        or "'auto' (default): the model's own chat template when its tokenizer ships one, else "
        "lwm's default layout; 'lwm' (lwm chat: LWM's vision_chat prompt token for token; other "
        "commands keep the default pieces); or a JSON file overriding prompt template fields",
    )
    p.add_argument(
        "--system",
        default=None,
        help="system sentence of the prompt template (with a chat template: a system message; "
        "without --system none is sent and the template may add its own default)",
    )
    add_strict_arg(p)


def add_kv_dtype_arg(p: argparse.ArgumentParser) -> None:
    """`--kv-dtype`: how the KV cache stores keys/values (default: the config's `kv_dtype`)."""
    # Checked by `lwm.cli.main` before the command runs (one line, not argparse's usage block).
    p.add_argument(
        "--kv-dtype",
        metavar="{" + ",".join(KV_DTYPES) + "}",
        default=None,
        help="KV-cache storage: auto (the compute dtype), bfloat16, float32, or 8-bit int8 / "
        "float8_e4m3fn (codes plus a scale per token and kv head: half a bf16 cache) "
        "(default: the config's model.kv_dtype, auto)",
    )


def add_sampling_args(p: argparse.ArgumentParser, *, temperature: float = 0.0) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument(
        "--temperature", type=float, default=temperature, help="0 = greedy (default %(default)s)"
    )
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = no nucleus filtering")
    p.add_argument("--seed", type=int, default=0)


def parse_mesh(spec: str | None):
    """`'sp=8,tp=2'` -> a mesh over all devices (missing axes 1); None -> None."""
    if not spec:
        return None
    from lwm.sharding import make_mesh

    sizes = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise LwmError(f"--mesh {spec!r}: expected axis=size pairs like 'sp=8'") from None
        if not sep:
            raise LwmError(f"--mesh {spec!r}: expected axis=size pairs like 'sp=8'")
    return make_mesh(sizes)


def model_overrides(args: argparse.Namespace) -> dict:
    """Config changes requested on the command line: --dtype, --kv-dtype and
    `--config.model.FIELD=V` (parsed by the type of the checkpoint's value, as config files are;
    unknown fields error). The flags win over `--config.model.*`."""
    out = kv_dtype_override(args)
    if args.dtype:
        out["dtype"] = args.dtype
    overrides = list(getattr(args, "config_overrides", None) or [])
    if not overrides:
        return out
    import ml_collections

    from lwm.config import apply_overrides
    from lwm.models.config import ModelConfig
    from lwm.models.io import read_model_config

    bad = [o for o in overrides if not o.startswith("model.")]
    if bad:
        raise LwmError(f"--config.{bad[0]}: only --config.model.* overrides apply to a checkpoint")
    stored = read_model_config(args.checkpoint, strict=args.strict).to_dict()
    tree = ml_collections.ConfigDict({"model": stored})
    apply_overrides(tree, overrides)
    new = ModelConfig.from_dict(tree.model).to_dict()
    changed = {k: v for k, v in new.items() if v != stored[k]}
    return {**changed, **out}


def kv_dtype_override(args: argparse.Namespace) -> dict:
    """`{"kv_dtype": name}` for `--kv-dtype name` (checked: a one-line ConfigError for an
    unknown name), else `{}`: model overrides for commands that build their model themselves."""
    name = getattr(args, "kv_dtype", None)
    if name is None:
        return {}
    from lwm.cache.kv_dtypes import check_kv_dtype

    return {"kv_dtype": check_kv_dtype(name)}


def load_model_from_args(args: argparse.Namespace):
    from lwm.models.io import load_model

    mesh = parse_mesh(args.mesh)
    overrides = model_overrides(args) or None
    return load_model(args.checkpoint, mesh=mesh, overrides=overrides, strict=args.strict), mesh


def load_tokenizer(path: str | None, checkpoint: str):
    """`--tokenizer PATH` (a .model, a tokenizer.json or a directory), else the tokenizer inside
    the checkpoint directory / workdir (tokenizer.json preferred to tokenizer.model)."""
    from lwm.data.tokenizer import load_tokenizer as load_path

    if path:
        return load_path(path)
    for name in TOKENIZER_FILENAMES:
        candidate = pathlib.Path(checkpoint).expanduser() / name
        if candidate.is_file():
            return load_path(candidate)
    raise LwmError(
        f"no tokenizer given and none found in {checkpoint} "
        "(pass --tokenizer PATH (.model, tokenizer.json or a directory))"
    )


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str = "the model") -> None:
    """Refuses a tokenizer whose ids can exceed the model's embedding table (the model would
    read garbage rows for them and score or answer nonsense without any error)."""
    if tokenizer.vocab_size > vocab_size:
        raise LwmError(
            f"tokenizer has {tokenizer.vocab_size} pieces but {where} only {vocab_size} tokens "
            "(a tokenizer of another model?)"
        )


def load_template(args: argparse.Namespace, tokenizer=None):
    """The prompt template of `--template` / `--system` for `tokenizer`: `auto` (the default) is
    its chat template when it ships one, else lwm's default layout. Without a tokenizer, the
    flags are only checked (a bad JSON file fails before any model is loaded)."""
    from lwm.inference.prompts import select_template

    return select_template(args.template, tokenizer, system=args.system)


def sampling_from_args(args: argparse.Namespace):
    from lwm.inference.sampling import SamplingConfig

    if args.max_new_tokens < 1:
        raise LwmError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return SamplingConfig(args.temperature, args.top_k, args.top_p)


def make_sampler(model, mesh, args: argparse.Namespace):
    from lwm.inference.sampler import Sampler

    return Sampler(
        model, mesh=mesh, max_cache_len=args.max_cache_len, prefill_chunk=args.prefill_chunk
    )


class TextStreamer:
    """Prints the text of a growing token list as it grows (decoding the whole list each time,
    so multi-token characters and sentencepiece spaces come out right). Stops at any of
    `stop_ids` (not printed); an id the tokenizer lacks (a padded model vocabulary) prints
    nothing."""

    def __init__(self, tokenizer, *, stop_ids: EosIds = None, out=None):
        from lwm.inference.sampling import eos_set

        self.tokenizer = tokenizer
        self.stop_ids = eos_set(stop_ids)
        self.out = out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""
        self.stopped = False

    def push(self, token: int) -> None:
        if self.stopped:
            return
        if int(token) in self.stop_ids:
            self.stopped = True
            return
        if not 0 <= int(token) < self.tokenizer.vocab_size:
            return
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
        self.out.write("\n")
        self.out.flush()
        self.printed = text
        return text

    def callback(self, row: int = 0) -> Callable:
        return lambda step, tokens: self.push(int(tokens[row]))
