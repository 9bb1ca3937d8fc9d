"""HF LLaMA-family tensors (LLaMA, Qwen2, Mistral) <-> lwm parameter trees (nested dicts
shaped like `nnx.to_pure_dict`). `params_from_hf` reads through any `get(name) -> np.ndarray`
(a safetensors directory, dequantized GGUF tensors).

HF stores linear weights as `[out, in]`; lwm stores `[in, ...]` with heads split out:
  q_proj [N*H, D] -> wq [D, N, H];  k/v_proj [K*H, D] -> wk/wv [D, K, H]
  o_proj [D, N*H] -> wo [N, H, D]
  gate/up_proj [F, D] -> w_gate/w_up [D, F];  down_proj [D, F] -> w_down [F, D]
  embed_tokens [V, D] -> embed.text;  lm_head [V, D] -> lm_head [D, V]
  q/k/v_proj.bias [N*H] / [K*H] -> bq [N, H], bk/bv [K, H]  (only with `attention_bias`: Qwen2)
Both use the rotate-half RoPE layout, so no q/k column permutation is needed. A vision model
exports as one vocabulary, text ids then vision ids: embed_tokens = embed.text ++ embed.vision,
lm_head = text head ++ vision_head (both [V + Vv, D]).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lwm.errors import LwmError
from lwm.models.config import ModelConfig


def hf_tensor_names(cfg: ModelConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names += [
            p + "input_layernorm.weight",
            p + "post_attention_layernorm.weight",
            p + "self_attn.q_proj.weight",
            p + "self_attn.k_proj.weight",
            p + "self_attn.v_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "mlp.gate_proj.weight",
            p + "mlp.up_proj.weight",
            p + "mlp.down_proj.weight",
        ]
        if cfg.attention_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
    return names


def params_from_hf(get: Callable[[str], np.ndarray], cfg: ModelConfig, *, dtype=np.float32) -> dict:
    """Builds the lwm parameter tree, reading each HF tensor through `get(name)`.

    Shapes are checked against `cfg`; a missing or mis-shaped tensor raises LwmError naming it.
    """
    d, n, k, h, f, v = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    )

    def load(name: str, shape: tuple[int, ...]) -> np.ndarray:
        x = get(name)
        if tuple(x.shape) != shape:
            raise LwmError(f"tensor {name} has shape {tuple(x.shape)}, expected {shape}")
        return np.asarray(x).astype(dtype)

    def layer(i: int) -> dict:
        p = f"model.layers.{i}."
        attn_bias = {}
        if cfg.attention_bias:
            attn_bias = {
                "bq": load(p + "self_attn.q_proj.bias", (n * h,)).reshape(n, h),
                "bk": load(p + "self_attn.k_proj.bias", (k * h,)).reshape(k, h),
                "bv": load(p + "self_attn.v_proj.bias", (k * h,)).reshape(k, h),
            }
        return {
            "attn_norm": {"scale": load(p + "input_layernorm.weight", (d,))},
            "mlp_norm": {"scale": load(p + "post_attention_layernorm.weight", (d,))},
            "attn": {
                "wq": load(p + "self_attn.q_proj.weight", (n * h, d)).T.reshape(d, n, h),
                "wk": load(p + "self_attn.k_proj.weight", (k * h, d)).T.reshape(d, k, h),
                "wv": load(p + "self_attn.v_proj.weight", (k * h, d)).T.reshape(d, k, h),
                "wo": load(p + "self_attn.o_proj.weight", (d, n * h)).T.reshape(n, h, d),
                **attn_bias,
            },
            "mlp": {
                "w_gate": load(p + "mlp.gate_proj.weight", (f, d)).T,
                "w_up": load(p + "mlp.up_proj.weight", (f, d)).T,
                "w_down": load(p + "mlp.down_proj.weight", (d, f)).T,
            },
        }

    layers = [layer(i) for i in range(cfg.num_layers)]
    if cfg.scan_layers:
        import jax

        blocks = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        blocks = {str(i): layer for i, layer in enumerate(layers)}
    params = {
        "embed": {"text": load("model.embed_tokens.weight", (v, d))},
        "blocks": blocks,
        "final_norm": {"scale": load("model.norm.weight", (d,))},
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = load("lm_head.weight", (v, d)).T
    return params


def params_to_hf(params: dict, cfg: ModelConfig, *, dtype=np.float32) -> dict[str, np.ndarray]:
    """The inverse of `params_from_hf`; vision parameters are appended after the text rows."""
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def arr(x) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(x).astype(dtype))

    blocks = params["blocks"]
    out = {
        "model.embed_tokens.weight": arr(params["embed"]["text"]),
        "model.norm.weight": arr(params["final_norm"]["scale"]),
    }
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = arr(np.asarray(params["lm_head"]).T)
    if cfg.has_vision:
        text_head_vd = out.get("lm_head.weight", out["model.embed_tokens.weight"])
        out["model.embed_tokens.weight"] = arr(
            np.concatenate([params["embed"]["text"], params["embed"]["vision"]], axis=0)
        )
        out["lm_head.weight"] = arr(
            np.concatenate([text_head_vd, np.asarray(params["vision_head"]).T], axis=0)
        )
    for i in range(cfg.num_layers):
        if cfg.scan_layers:
            import jax

            b = jax.tree.map(lambda x, i=i: np.asarray(x)[i], blocks)
        else:
            b = blocks[str(i)] if str(i) in blocks else blocks[i]
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = arr(b["attn_norm"]["scale"])
        out[p + "post_attention_layernorm.weight"] = arr(b["mlp_norm"]["scale"])
        out[p + "self_attn.q_proj.weight"] = arr(np.asarray(b["attn"]["wq"]).reshape(d, n * h).T)
        out[p + "self_attn.k_proj.weight"] = arr(np.asarray(b["attn"]["wk"]).reshape(d, k * h).T)
        out[p + "self_attn.v_proj.weight"] = arr(np.asarray(b["attn"]["wv"]).reshape(d, k * h).T)
        out[p + "self_attn.o_proj.weight"] = arr(np.asarray(b["attn"]["wo"]).reshape(n * h, d).T)
        if cfg.attention_bias:
            for x in "qkv":
                bias = np.asarray(b["attn"][f"b{x}"]).reshape(-1)
                out[p + f"self_attn.{x}_proj.bias"] = arr(bias)
        out[p + "mlp.gate_proj.weight"] = arr(np.asarray(b["mlp"]["w_gate"]).T)
        out[p + "mlp.up_proj.weight"] = arr(np.asarray(b["mlp"]["w_up"]).T)
        out[p + "mlp.down_proj.weight"] = arr(np.asarray(b["mlp"]["w_down"]).T)
    return out
