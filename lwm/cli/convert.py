"""`lwm convert from-hf HF_DIR OUT_DIR` and `lwm convert to-hf CKPT_DIR OUT_DIR`."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints to/from HF transformers LLaMA")
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("from-hf", help="HF LlamaForCausalLM directory -> lwm checkpoint")
    a.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    a.add_argument("out_dir", help="new lwm checkpoint directory (must not exist or be empty)")
    a.add_argument(
        "--param-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="storage dtype of the converted parameters (bfloat16 halves memory for 7B)",
    )
    a.set_defaults(func=_from_hf)
    b = sub.add_parser(
        "to-hf", help="lwm checkpoint -> HF LlamaForCausalLM directory (text models)"
    )
    b.add_argument("ckpt_dir", help="lwm model checkpoint or training workdir")
    b.add_argument("out_dir", help="new HF directory (must not exist or be empty)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.set_defaults(func=_to_hf)


def _from_hf(args: argparse.Namespace) -> int:
    from lwm.interop.hf_convert import convert_from_hf

    out = convert_from_hf(args.hf_dir, args.out_dir, param_dtype=args.param_dtype)
    print(f"wrote lwm checkpoint {out}")
    return 0


def _to_hf(args: argparse.Namespace) -> int:
    from lwm.interop.hf_convert import convert_to_hf

    out = convert_to_hf(args.ckpt_dir, args.out_dir, dtype=args.dtype)
    print(f"wrote HF LLaMA directory {out}")
    return 0
