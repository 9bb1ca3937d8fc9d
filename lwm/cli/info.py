"""`lwm info --config X`: the resolved model config, parameter count and FLOPs per token."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show a config's model, parameter count and FLOPs (nothing allocated)"
    )
    p.add_argument("--config", required=True, help="config file or preset name (configs/*.py)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs/token")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lwm.config import load_config
    from lwm.models.config import ModelConfig
    from lwm.models.stats import flops_per_token, param_count

    config = load_config(args.config, args.config_overrides)
    cfg = ModelConfig.from_dict(config.model)
    seq = args.seq_len or cfg.max_sequence_length
    info = {
        "config": args.config,
        "params": param_count(cfg),
        "seq_len": seq,
        "train_flops_per_token": flops_per_token(cfg, seq),
        "model": cfg.to_dict(),
        "mesh": config.mesh.to_dict() if "mesh" in config else None,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"config        {args.config}")
    print(f"parameters    {info['params']:,} ({info['params'] / 1e9:.3f} B)")
    print(f"train FLOPs   {info['train_flops_per_token']:.3e} per token at seq_len {seq}")
    print(
        f"shape         d={cfg.hidden_size} ffn={cfg.intermediate_size} layers={cfg.num_layers} "
        f"heads={cfg.num_heads}/{cfg.num_kv_heads} head_dim={cfg.head_dim} vocab={cfg.vocab_size}"
        + (f" vision_vocab={cfg.vision_vocab_size}" if cfg.has_vision else "")
    )
    rs = cfg.rope_scaling
    scaling = (
        f" {rs.kind} x{rs.factor:g} over {rs.original_max_position_embeddings}"
        if rs is not None and rs.kind != "default"
        else ""
    )
    extras = (" tied" if cfg.tie_word_embeddings else "") + (
        " qkv_bias" if cfg.attention_bias else ""
    )
    print(
        f"rope          theta={cfg.rope_theta:g}{scaling} max_len={cfg.max_sequence_length}"
        f"{extras}; attention "
        f"{cfg.attention.backend} ({cfg.attention.layout}, chunks {cfg.attention.query_chunk_size}/"
        f"{cfg.attention.key_chunk_size})"
    )
    return 0
