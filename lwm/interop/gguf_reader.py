"""GGUF files (llama.cpp's format) read as an HF-style config dict and HF-named tensors.

`read_gguf` opens a file with the `gguf` package (metadata and tensor index; the data stays
memory-mapped). `hf_config_from_gguf` maps llama.cpp's metadata keys (`llama.block_count`, ...)
to a transformers config.json dict, and `hf_tensor_getter` returns `get(hf_name)` for
`lwm.interop.hf_weights.params_from_hf`: it finds the GGUF tensor (`blk.3.attn_q.weight` for
`model.layers.3.self_attn.q_proj.weight`), dequantizes it to float32 in numpy order (GGUF lists
dims innermost first, `ne`, so a `[out, in]` matrix is stored as ne = [in, out]) and undoes the
row permutation llama.cpp's HF->GGUF converter applies to LLaMA's q and k weights.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from lwm.errors import LwmError

ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
"""GGUF `general.architecture` -> (HF model_type, HF architecture) that lwm converts."""
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
"""GGML tensor types that are dequantized (names of `gguf.GGMLQuantizationType`)."""
ROPE_FREQS = "rope_freqs.weight"
"""Per-frequency RoPE divisors llama.cpp stores for Llama-3.1-style (`llama3`) scaling."""

# GGUF leaf name -> HF name inside `model.layers.N.`
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclasses.dataclass
class GgufFile:
    """An opened GGUF file: its metadata values and its tensors (memory-mapped, not decoded)."""

    path: pathlib.Path
    """The file."""
    metadata: dict[str, Any]
    """Key -> value (str, int, float, bool or a list of them), as `ReaderField.contents()`."""
    tensors: dict[str, Any]
    """GGUF tensor name -> `gguf.ReaderTensor`."""

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, key: str, default: Any = None) -> Any:
        """The value of `{architecture}.{key}` (e.g. `block_count`)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in numpy (row-major) order."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))


def read_gguf(path: str | pathlib.Path) -> GgufFile:
    """Opens a GGUF file; a missing, truncated or non-GGUF file raises a one-line LwmError."""
    import gguf

    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise LwmError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LwmError(f"{p} is not a GGUF file (no GGUF magic at its start)")
    try:
        reader = gguf.GGUFReader(p)
        metadata = {key: field.contents() for key, field in reader.fields.items()}
        tensors = {t.name: t for t in reader.tensors}
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged input file
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LwmError(f"cannot read GGUF file {p} (truncated or damaged?): {detail}") from None
    return GgufFile(path=p, metadata=metadata, tensors=tensors)


def dequantized(gf: GgufFile, name: str) -> np.ndarray:
    """A tensor as float32 in numpy order; an unsupported type is a one-line LwmError."""
    from gguf.quants import dequantize

    tensor = gf.tensors[name]
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise LwmError(
            f"tensor {name} has GGML type {kind}, which lwm does not dequantize "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    x = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    return x.reshape(gf.shape(name))


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k permutation: per head it stores the rows as interleaved pairs
    (GPT-J rotary layout), HF keeps the first halves then the second halves (rotate-half)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _need(gf: GgufFile, key: str) -> Any:
    value = gf.arch_key(key)
    if value is None:
        raise LwmError(f"{gf.path}: metadata key {gf.architecture}.{key} is missing")
    return value


def _rope_scaling(gf: GgufFile, head_dim: int, theta: float) -> dict[str, Any] | None:
    kind = gf.arch_key("rope.scaling.type")
    if ROPE_FREQS in gf.tensors:
        if kind not in (None, "none"):
            raise LwmError(f"{gf.path}: both {ROPE_FREQS} and rope.scaling.type={kind!r}")
        factors = dequantized(gf, ROPE_FREQS)
        if np.allclose(factors, 1.0):
            return None
        return llama3_scaling_from_factors(factors, head_dim, theta)
    if kind in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": str(kind)}
    factor = gf.arch_key("rope.scaling.factor")
    if factor is not None:
        scaling["factor"] = float(factor)
    original = gf.arch_key("rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    for key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
        if gf.arch_key(f"rope.scaling.{key}") is not None:
            scaling[hf_key] = float(gf.arch_key(f"rope.scaling.{key}"))
    attn_factor = gf.arch_key("rope.scaling.attn_factor")
    if attn_factor is not None and float(attn_factor) != 1.0:
        # llama.cpp's multiplier is not transformers' yarn attention_factor: refuse, not guess.
        raise LwmError(f"unsupported GGUF: rope.scaling.attn_factor={attn_factor}")
    return scaling


def llama3_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """The `rope_freqs` llama.cpp writes for a Llama-3.1 `rope_scaling` (frequency divisors)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    scaled = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(
        wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, scaled)
    )


def llama3_scaling_from_factors(factors: np.ndarray, head_dim: int, theta: float) -> dict[str, Any]:
    """Recovers HF's `llama3` rope_scaling from llama.cpp's `rope_freqs` divisors.

    The scaling depends on `original / low_freq_factor` and `original / high_freq_factor` only
    (scaling all three by k changes nothing), so low is fixed at 1 (then rescaled to make
    `original` an integer) and the rest is solved from the blended divisors: there
    1/f = (1 - s) / factor + s with s = (original / wavelength - low) / (high - low). With fewer
    than two blended divisors the boundaries are chosen between the sampled wavelengths. The
    result is checked to reproduce every divisor; anything else is refused."""
    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    if factors.shape != (head_dim // 2,):
        raise LwmError(f"{ROPE_FREQS} has {factors.size} values, expected {head_dim // 2}")
    factor = float(factors.max())
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ones = np.isclose(factors, 1.0, rtol=1e-5)
    full = np.isclose(factors, factor, rtol=1e-5)
    mid = ~(ones | full)
    blend = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    below = wavelen[ones].max() if ones.any() else wavelen.min() / 2
    above = wavelen[full].min() if full.any() else wavelen.max() * 2
    if mid.sum() >= 2:
        slope, offset = np.polyfit(1 / wavelen[mid], blend, 1)
        high, original = (1 - 1 / offset, -slope / offset) if offset < 0 else (0.0, 0.0)
    elif mid.sum() == 1:
        original = math.sqrt(wavelen[mid][0] * above)
        high = 1 + (original / wavelen[mid][0] - 1) / blend[0]
    else:
        original, high = above**0.75 * below**0.25, (above / below) ** 0.5
    if original >= 1 and high > 1:
        k = round(original) / original
        for low, hi in ((round(k, 6), round(high * k, 6)), (k, high * k)):
            want = llama3_factors(head_dim, theta, factor, low, hi, round(original))
            if np.allclose(want, factors, rtol=1e-4, atol=1e-6):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": float(low),
                    "high_freq_factor": float(hi),
                    "original_max_position_embeddings": int(round(original)),
                }
    raise LwmError(f"{ROPE_FREQS} holds RoPE frequency divisors that no llama3 scaling gives")


def hf_config_from_gguf(gf: GgufFile) -> dict[str, Any]:
    """A transformers config.json dict from the file's metadata (refuses other architectures)."""
    arch = gf.architecture
    if arch not in ARCHITECTURES:
        raise LwmError(
            f"unsupported GGUF architecture {arch!r} (lwm converts {', '.join(ARCHITECTURES)})"
        )
    model_type, hf_arch = ARCHITECTURES[arch]
    if "token_embd.weight" not in gf.tensors:
        raise LwmError(f"{gf.path}: tensor token_embd.weight is missing")
    vocab_size, hidden = gf.shape("token_embd.weight")
    num_heads = int(_need(gf, "attention.head_count"))
    head_dim = int(gf.arch_key("attention.key_length") or hidden // num_heads)
    rotary = gf.arch_key("rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        raise LwmError(
            f"unsupported GGUF: partial rotary embedding (rope.dimension_count={rotary}, "
            f"head dim {head_dim})"
        )
    theta = float(gf.arch_key("rope.freq_base", 10000.0))
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [hf_arch],
        "vocab_size": int(vocab_size),
        "hidden_size": int(_need(gf, "embedding_length")),
        "intermediate_size": int(_need(gf, "feed_forward_length")),
        "num_hidden_layers": int(_need(gf, "block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(gf.arch_key("attention.head_count_kv") or num_heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(gf.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "max_position_embeddings": int(gf.arch_key("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in gf.tensors,
    }
    if cfg["hidden_size"] != hidden:
        raise LwmError(
            f"{gf.path}: embedding_length {cfg['hidden_size']} but token_embd is {hidden} wide"
        )
    scaling = _rope_scaling(gf, head_dim, theta)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        value = gf.metadata.get(f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[key.replace("padding", "pad")] = int(value)
    return cfg


def hf_name(gguf_name: str) -> str | None:
    """The HF tensor name of a GGUF tensor name (None: not a tensor lwm maps)."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
    return None


def hf_tensor_getter(gf: GgufFile, hf_config: dict[str, Any]) -> Callable[[str], np.ndarray]:
    """`get(hf_name) -> float32 array` in HF layout; refuses tensors lwm cannot place."""
    by_hf = {}
    for name in gf.tensors:
        target = hf_name(name)
        if target is None and name != ROPE_FREQS:
            raise LwmError(
                f"unexpected GGUF tensor {name}: the model has parameters lwm's "
                f"{gf.architecture} cannot represent"
            )
        if target is not None:
            by_hf[target] = name
    # Only llama.cpp's LLaMA converter permutes q/k (Qwen2 is written in HF's rotate-half order).
    permuted = gf.architecture == "llama"
    heads = {
        "q_proj": hf_config["num_attention_heads"],
        "k_proj": hf_config["num_key_value_heads"],
    }

    def get(name: str) -> np.ndarray:
        if name not in by_hf:
            raise LwmError(f"tensor {name} missing from the GGUF file (as {_gguf_name(name)})")
        x = dequantized(gf, by_hf[name])
        proj = name.split(".")[-2]
        if permuted and proj in heads and name.endswith(".weight"):
            x = unpermute_rows(x, heads[proj])
        return x

    return get


def _gguf_name(hf: str) -> str:
    for g, h in _TOP_NAMES.items():
        if h == hf:
            return g
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf)
    if m:
        for g, h in _BLOCK_NAMES.items():
            if h == m.group(2):
                return f"blk.{m.group(1)}.{g}"
    return "?"
