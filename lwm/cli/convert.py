"""`lwm convert from-hf HF_DIR OUT_DIR`, `lwm convert to-hf CKPT_DIR OUT_DIR` and
`lwm convert from-lwm PARAMS OUT_DIR --config PRESET`, `lwm convert vqgan-from-lwm FILE OUT_DIR`,
`lwm convert from-gguf FILE OUT_DIR`."""

from __future__ import annotations

import argparse


def add_param_dtype(parser: argparse.ArgumentParser, help: str) -> None:
    """`--param-dtype`: the storage dtype a converter writes parameters in."""
    parser.add_argument(
        "--param-dtype", default="float32", choices=["float32", "bfloat16", "float16"], help=help
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints to/from HF transformers")
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser(
        "from-hf",
        help="HF directory (LLaMA 1/2/3.x, SmolLM2, Qwen2/2.5, Mistral) -> lwm checkpoint",
        description="Convert a transformers model directory into an lwm model checkpoint: "
        "LlamaForCausalLM (RoPE default, linear, llama3 or yarn), Qwen2ForCausalLM (q/k/v "
        "biases) or MistralForCausalLM without a sliding window. Its tokenizer files "
        "(tokenizer.json and side files, or tokenizer.model) are copied beside the checkpoint.",
    )
    a.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    a.add_argument("out_dir", help="new lwm checkpoint directory (must not exist or be empty)")
    add_param_dtype(a, "storage dtype of the converted parameters (bfloat16 halves memory for 7B)")
    a.set_defaults(func=_from_hf)
    b = sub.add_parser(
        "to-hf",
        help="lwm checkpoint -> HF LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases) "
        "directory, with the checkpoint's tokenizer files (a vision model: one vocabulary of "
        "text ids then vision ids, plus lwm_vision.json with the offsets)",
    )
    b.add_argument("ckpt_dir", help="lwm model checkpoint or training workdir")
    b.add_argument("out_dir", help="new HF directory (must not exist or be empty)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.set_defaults(func=_to_hf)
    _add_from_lwm(sub)
    _add_vqgan_from_lwm(sub)
    _add_from_gguf(sub)


def _from_hf(args: argparse.Namespace) -> int:
    from lwm.interop.hf_convert import convert_from_hf

    notes: list[str] = []
    out = convert_from_hf(args.hf_dir, args.out_dir, param_dtype=args.param_dtype, notes=notes)
    print(f"wrote lwm checkpoint {out}")
    _print_notes(notes)
    return 0


def _to_hf(args: argparse.Namespace) -> int:
    import json

    from lwm.interop.hf_convert import convert_to_hf

    notes: list[str] = []
    out = convert_to_hf(args.ckpt_dir, args.out_dir, dtype=args.dtype, notes=notes)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote HF {arch} directory {out}")
    _print_notes(notes)
    return 0


def _print_notes(notes: list[str]) -> None:
    import sys

    for note in notes:
        print(f"lwm convert: note: {note}", file=sys.stderr)


# -- from-lwm: LWM's streaming msgpack Jax checkpoints (self-contained block) ------------------


def _add_from_lwm(sub) -> None:
    c = sub.add_parser(
        "from-lwm",
        help="LWM's released Jax checkpoint (streaming msgpack) -> lwm checkpoint",
        description="Convert an LWM Jax checkpoint (LWM-Text-*-Jax, LWM-*-Jax: the streaming "
        "msgpack files of LWM's trainer) into an lwm model checkpoint. The file holds no config: "
        "--config names the model preset (lwm-text-1m, lwm-chat-1m, ... or a config file) and "
        "--config.model.FIELD=VALUE adjusts it. PARAMS is a path or LWM's params::PATH / "
        "trainstate_params::PATH / trainstate::PATH.",
    )
    c.add_argument("params", help="LWM checkpoint file (optionally params::, trainstate::...)")
    c.add_argument("out_dir", help="new lwm checkpoint directory (must not exist or be empty)")
    c.add_argument("--config", required=True, help="model preset name or config file")
    add_param_dtype(
        c, "storage dtype of the converted parameters (float32 keeps a bf16 file exact)"
    )
    c.set_defaults(func=_from_lwm)


def _from_lwm(args: argparse.Namespace) -> int:
    from lwm.config import apply_overrides, load_config_file
    from lwm.interop.lwm_convert import convert_from_lwm
    from lwm.models.config import ModelConfig
    from lwm.models.presets import PRESETS, base_config

    config = base_config(args.config) if args.config in PRESETS else load_config_file(args.config)
    apply_overrides(config, args.config_overrides)
    cfg = ModelConfig.from_dict(config.model).replace(param_dtype=args.param_dtype)
    out = convert_from_lwm(args.params, args.out_dir, cfg, preset=args.config)
    print(f"wrote lwm checkpoint {out}")
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


# -- from-gguf (llama.cpp GGUF files, with the tokenizer they embed) -------------------------


def _add_from_gguf(sub) -> None:
    g = sub.add_parser(
        "from-gguf",
        help="llama.cpp GGUF file (LLaMA / Qwen2 family) -> lwm checkpoint + tokenizer.json",
        description="Convert a GGUF model file (llama.cpp, Ollama) into an lwm model checkpoint. "
        "Tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) are dequantized to "
        "--param-dtype; the architecture and RoPE settings come from the file's metadata, and "
        "the tokenizer it embeds is written beside the checkpoint as tokenizer.json, "
        "tokenizer_config.json (chat template, special tokens) and generation_config.json.",
    )
    g.add_argument("gguf_file", help="the .gguf file")
    g.add_argument("out_dir", help="new lwm checkpoint directory (must not exist or be empty)")
    add_param_dtype(g, "storage dtype of the dequantized parameters")
    g.set_defaults(func=_from_gguf)


def _from_gguf(args: argparse.Namespace) -> int:
    from lwm.interop.gguf_convert import convert_from_gguf

    done = convert_from_gguf(args.gguf_file, args.out_dir, param_dtype=args.param_dtype)
    print(f"wrote lwm checkpoint {done.out_dir}")
    if done.tokenizer_note is None:
        print(f"wrote tokenizer beside it: {', '.join(done.tokenizer_files)}")
    else:
        print(f"tokenizer not written: {done.tokenizer_note}")
    return 0
