"""Writes LWM's streaming msgpack checkpoints (the format of LWM's trainer, tux/EasyLM's
StreamingCheckpointer) from a HF LLaMA's weights, for the `lwm convert from-lwm` tests.

Written from the format's description, independently of lwm's reader: each record is the msgpack
array `[key path (array of str), bin]`, the bin being flax's serialization of one leaf (msgpack
ext 1 holding `[shape, dtype name, C-order bytes]`; leaves over `chunk_bytes` as a chunked map).
LWM's params: wte/embedding, h/{scan_decoder|<i>}/{attention/wq.., feed_forward/w1.., *_norm},
ln_f, lm_head, and for vision models vte/embedding and vision_head, Dense kernels as [in, out];
its RoPE pairs features (2i, 2i+1) of each head, HF's (i, i + H/2).
"""

from __future__ import annotations

import pathlib

import msgpack
import numpy as np


def _ext_array(x: np.ndarray) -> msgpack.ExtType:
    x = np.ascontiguousarray(x)
    body = msgpack.packb([list(x.shape), x.dtype.name, x.tobytes()], use_bin_type=True)
    return msgpack.ExtType(1, body)


def leaf_bytes(x: np.ndarray, chunk_bytes: int = 2**30) -> bytes:
    """flax `to_bytes` of one array leaf."""
    if x.nbytes > chunk_bytes:
        flat = np.ascontiguousarray(x).reshape(-1)
        step = max(1, chunk_bytes // x.dtype.itemsize)
        chunks = [flat[i : i + step] for i in range(0, flat.size, step)]
        obj = {
            "__msgpack_chunked_array__": True,
            "shape": {str(i): int(d) for i, d in enumerate(x.shape)},
            "chunks": {str(i): _ext_array(c) for i, c in enumerate(chunks)},
        }
        return msgpack.packb(obj, use_bin_type=True)
    return msgpack.packb(_ext_array(x), use_bin_type=True)


def write_stream(path: pathlib.Path, records, chunk_bytes: int = 2**30) -> pathlib.Path:
    packer = msgpack.Packer(use_bin_type=True)
    with open(path, "wb") as f:
        for key, x in records:
            f.write(packer.pack([list(key), leaf_bytes(np.asarray(x), chunk_bytes)]))
    return path


def _interleave(w_half: np.ndarray, head_dim: int) -> np.ndarray:
    """Columns of a [in, heads*head_dim] kernel from rotate-half to adjacent-pair RoPE order."""
    d_in = w_half.shape[0]
    w = w_half.reshape(d_in, -1, 2, head_dim // 2)  # [in, heads, half, i]
    return np.swapaxes(w, -1, -2).reshape(d_in, -1)  # feature 2i <- i, 2i+1 <- i + H/2


def lwm_params_from_hf(sd: dict[str, np.ndarray], hf_cfg: dict) -> dict[tuple, np.ndarray]:
    """LWM's per-layer param dict (key tuples) from a HF state dict (numpy, [out, in] weights)."""
    h = hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"]
    out = {
        ("transformer", "wte", "embedding"): sd["model.embed_tokens.weight"],
        ("transformer", "ln_f", "kernel"): sd["model.norm.weight"],
        ("lm_head", "kernel"): sd["lm_head.weight"].T,
    }
    for i in range(hf_cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        b = ("transformer", "h", str(i))
        out[b + ("attention", "wq", "kernel")] = _interleave(sd[p + "self_attn.q_proj.weight"].T, h)
        out[b + ("attention", "wk", "kernel")] = _interleave(sd[p + "self_attn.k_proj.weight"].T, h)
        out[b + ("attention", "wv", "kernel")] = sd[p + "self_attn.v_proj.weight"].T
        out[b + ("attention", "wo", "kernel")] = sd[p + "self_attn.o_proj.weight"].T
        out[b + ("feed_forward", "w1", "kernel")] = sd[p + "mlp.gate_proj.weight"].T
        out[b + ("feed_forward", "w3", "kernel")] = sd[p + "mlp.up_proj.weight"].T
        out[b + ("feed_forward", "w2", "kernel")] = sd[p + "mlp.down_proj.weight"].T
        out[b + ("attention_norm", "kernel")] = sd[p + "input_layernorm.weight"]
        out[b + ("ffn_norm", "kernel")] = sd[p + "post_attention_layernorm.weight"]
    return out


def scan(params: dict[tuple, np.ndarray], num_layers: int) -> dict[tuple, np.ndarray]:
    """The scanned layout: per-layer block params stacked under h/scan_decoder, layer axis first."""
    out = {k: v for k, v in params.items() if k[:2] != ("transformer", "h")}
    names = sorted({k[3:] for k in params if k[:2] == ("transformer", "h")})
    for n in names:
        out[("transformer", "h", "scan_decoder") + n] = np.stack(
            [params[("transformer", "h", str(i)) + n] for i in range(num_layers)]
        )
    return out


def write_lwm_checkpoint(
    path: pathlib.Path,
    params: dict[tuple, np.ndarray],
    *,
    dtype=np.float32,
    layout: str = "params",
    chunk_bytes: int = 2**30,
) -> pathlib.Path:
    """`layout`: "params" (streaming_params: the bare param keys) or "trainstate" (a full train
    state: step, params under ("params", "params"), and optimizer moments)."""
    recs = [(k, np.asarray(v).astype(dtype)) for k, v in params.items()]
    if layout == "trainstate":
        moments = [(("opt_state", "1", "0", "mu", "params") + k, np.zeros_like(v)) for k, v in recs]
        recs = (
            [(("step",), np.asarray(7, np.int32))]
            + [(("params", "params") + k, v) for k, v in recs]
            + moments
        )
    return write_stream(path, recs, chunk_bytes)


def hf_state_dict(hf_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    import json

    from safetensors.numpy import load_file

    return load_file(str(hf_dir / "model.safetensors")), json.loads(
        (hf_dir / "config.json").read_text()
    )
