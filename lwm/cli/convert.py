"""`lwm convert from-hf HF_DIR OUT_DIR`, `lwm convert to-hf CKPT_DIR OUT_DIR` and
`lwm convert vqgan-from-lwm FILE OUT_DIR`."""

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
        "to-hf",
        help="lwm checkpoint -> HF LlamaForCausalLM directory (a vision model: one vocabulary "
        "of text ids then vision ids, plus lwm_vision.json with the offsets)",
    )
    b.add_argument("ckpt_dir", help="lwm model checkpoint or training workdir")
    b.add_argument("out_dir", help="new HF directory (must not exist or be empty)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.set_defaults(func=_to_hf)
    _add_vqgan_from_lwm(sub)


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


# -- vqgan-from-lwm (LWM's pickled VQGAN weights) --------------------------------------------


def _add_vqgan_from_lwm(sub) -> None:
    v = sub.add_parser(
        "vqgan-from-lwm",
        help="LWM's VQGAN weights file (pickled params) -> lwm VQGAN checkpoint",
        description=(
            "Reads LWM's released VQGAN params (the `vqgan` file next to LWM-Chat's Jax "
            "checkpoints) with a restricted unpickler (numpy arrays, dtypes and dicts only; any "
            "other pickled global is refused, nothing in the file is run) and writes an lwm "
            "VQGAN checkpoint of the vqgan_lwm preset. --config.vqgan.FIELD=VALUE overrides "
            "the preset for smaller variants of the same architecture. The encoder takes float "
            "frames in [-1, 1] (or uint8), as LWM's does."
        ),
    )
    v.add_argument("weights", help="LWM's pickled VQGAN params file")
    v.add_argument(
        "out_dir", help="new lwm VQGAN checkpoint directory (must not exist or be empty)"
    )
    v.set_defaults(func=_vqgan_from_lwm)


def _vqgan_from_lwm(args: argparse.Namespace) -> int:
    from lwm.config import load_config
    from lwm.interop.lwm_vqgan import convert_vqgan_from_lwm
    from lwm.video.config import VQGANConfig

    cfg = VQGANConfig.from_dict(load_config("vqgan_lwm", args.config_overrides).vqgan)
    out = convert_vqgan_from_lwm(args.weights, args.out_dir, cfg)
    print(
        f"wrote lwm VQGAN checkpoint {out} (preset {cfg.name}, {cfg.tokens_per_frame} codes/frame)"
    )
    return 0
