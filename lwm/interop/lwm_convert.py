"""`lwm convert from-lwm`: LWM's released Jax checkpoints -> lwm model checkpoints.

LWM (flax linen, `lwm/llama.py` and `lwm/vision_llama.py` of LargeWorldModel/LWM) names its params
  transformer/wte/embedding [V, D]         -> embed/text
  transformer/vte/embedding [Vv, D]        -> embed/vision        (vision models)
  transformer/ln_f/kernel [D]              -> final_norm/scale
  lm_head/kernel [D, V]                    -> lm_head
  vision_head/kernel [D, Vv]               -> vision_head         (vision models)
and per block (`transformer/h/scan_decoder/...` stacked with the layer axis first when the model
was scanned, `transformer/h/<i>/...` otherwise):
  attention/wq/kernel [D, N*H]  -> attn/wq [D, N, H]   (q/k columns: interleaved RoPE -> halves)
  attention/wk|wv/kernel [D, K*H] -> attn/wk|wv [D, K, H]
  attention/wo/kernel [N*H, D]  -> attn/wo [N, H, D]
  feed_forward/w1|w3/kernel [D, F] -> mlp/w_gate|w_up;  feed_forward/w2/kernel [F, D] -> mlp/w_down
  attention_norm/kernel, ffn_norm/kernel [D] -> attn_norm/scale, mlp_norm/scale
The file holds no config: the preset (plus overrides) decides the shapes, checked per tensor.

Memory: outputs are preallocated at their final dtype and filled tensor by tensor as the stream is
read, so the peak is about the output plus the one tensor in flight (a few copies of it while it is
decoded and cast).
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from lwm.dtypes import to_numpy_dtype
from lwm.errors import LwmError
from lwm.interop.lwm_msgpack import iter_streaming_checkpoint
from lwm.layers.rotary import interleaved_to_half_permutation
from lwm.models.config import ModelConfig

_BLOCK_KEYS = {
    ("attention", "wq", "kernel"): ("attn", "wq"),
    ("attention", "wk", "kernel"): ("attn", "wk"),
    ("attention", "wv", "kernel"): ("attn", "wv"),
    ("attention", "wo", "kernel"): ("attn", "wo"),
    ("feed_forward", "w1", "kernel"): ("mlp", "w_gate"),
    ("feed_forward", "w3", "kernel"): ("mlp", "w_up"),
    ("feed_forward", "w2", "kernel"): ("mlp", "w_down"),
    ("attention_norm", "kernel"): ("attn_norm", "scale"),
    ("ffn_norm", "kernel"): ("mlp_norm", "scale"),
}
_LOAD_TYPES = ("params", "trainstate_params", "trainstate")
_TRAINSTATE_PREFIX = ("params", "params")


def parse_load_spec(spec: str) -> tuple[str, pathlib.Path]:
    """`params::PATH`, `trainstate_params::PATH`, `trainstate::PATH` (LWM's --load_checkpoint
    syntax) or a bare PATH (the layout is detected from the first record)."""
    kind, sep, rest = spec.partition("::")
    if not sep:
        return "auto", pathlib.Path(spec).expanduser()
    if kind not in _LOAD_TYPES:
        raise LwmError(
            f"unsupported LWM checkpoint type {kind!r} in {spec!r}; expected one of "
            f"{list(_LOAD_TYPES)} (flax_params, the non-streaming format, is not supported)"
        )
    return kind, pathlib.Path(rest).expanduser()


def _shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[int, ...]]]:
    """lwm param path -> (LWM's per-layer stored shape, lwm's per-layer shape); block paths start
    with "blocks" and have no layer axis here."""
    d, n, k, h, f = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    out = {
        ("embed", "text"): ((cfg.vocab_size, d), (cfg.vocab_size, d)),
        ("final_norm", "scale"): ((d,), (d,)),
        ("blocks", "attn", "wq"): ((d, n * h), (d, n, h)),
        ("blocks", "attn", "wk"): ((d, k * h), (d, k, h)),
        ("blocks", "attn", "wv"): ((d, k * h), (d, k, h)),
        ("blocks", "attn", "wo"): ((n * h, d), (n, h, d)),
        ("blocks", "mlp", "w_gate"): ((d, f), (d, f)),
        ("blocks", "mlp", "w_up"): ((d, f), (d, f)),
        ("blocks", "mlp", "w_down"): ((f, d), (f, d)),
        ("blocks", "attn_norm", "scale"): ((d,), (d,)),
        ("blocks", "mlp_norm", "scale"): ((d,), (d,)),
    }
    if not cfg.tie_word_embeddings:
        out[("lm_head",)] = ((d, cfg.vocab_size), (d, cfg.vocab_size))
    if cfg.has_vision:
        out[("embed", "vision")] = ((cfg.vision_vocab_size, d), (cfg.vision_vocab_size, d))
        out[("vision_head",)] = ((d, cfg.vision_vocab_size), (d, cfg.vision_vocab_size))
    return out


def _target(key: tuple[str, ...]) -> tuple[tuple[str, ...], int | None, bool] | None:
    """(lwm path, layer index or None, stacked) for an LWM param key; None if unknown."""
    top = {
        ("transformer", "wte", "embedding"): ("embed", "text"),
        ("transformer", "vte", "embedding"): ("embed", "vision"),
        ("transformer", "ln_f", "kernel"): ("final_norm", "scale"),
        ("lm_head", "kernel"): ("lm_head",),
        ("vision_head", "kernel"): ("vision_head",),
    }
    if key in top:
        return top[key], None, False
    if key[:2] != ("transformer", "h") or len(key) < 4:
        return None
    rest = _BLOCK_KEYS.get(key[3:])
    if rest is None:
        return None
    if key[2] == "scan_decoder":
        return ("blocks", *rest), None, True
    if re.fullmatch(r"\d+", key[2]):
        return ("blocks", *rest), int(key[2]), False
    return None


def _write_lwm(path: tuple[str, ...], x: np.ndarray, dest: np.ndarray) -> None:
    """Writes LWM-layout tensor `x` into lwm-layout `dest` (same leading layer axes), casting on
    the way; q/k columns are permuted one feature at a time, so no permuted copy of `x` is made."""
    if path in (("blocks", "attn", "wq"), ("blocks", "attn", "wk"), ("blocks", "attn", "wv")):
        y = x.reshape(dest.shape)  # [.., D, N*H] -> [.., D, N, H]: a view
        if path[-1] == "wv":
            dest[...] = y
            return
        # RoPE pairs features (2i, 2i+1) in LWM, (i, i + H/2) in lwm.
        for j, src in enumerate(interleaved_to_half_permutation(dest.shape[-1])):
            dest[..., j] = y[..., src]
        return
    dest[...] = x.reshape(dest.shape)


def _strip(kind: str, key: tuple[str, ...]) -> tuple[str, ...] | None:
    """The param key inside a record key, or None for a record that is not a param."""
    if kind == "params":
        # `params` files hold train_state.params["params"]; tolerate a leftover wrapper.
        while key[:1] == ("params",):
            key = key[1:]
        return key
    if key[: len(_TRAINSTATE_PREFIX)] == _TRAINSTATE_PREFIX:
        return key[len(_TRAINSTATE_PREFIX) :]
    return None


def read_lwm_params(spec: str, cfg: ModelConfig, *, preset: str = "") -> dict:
    """The lwm parameter tree (nested dict of numpy arrays, layout per `cfg.scan_layers`) of an
    LWM streaming checkpoint; unknown, missing or mis-shaped tensors raise a one-line LwmError."""
    kind, path = parse_load_spec(spec)
    shapes = _shapes(cfg)
    dtype = to_numpy_dtype(cfg.param_dtype)
    layers = cfg.num_layers
    where = f" for preset {preset!r}" if preset else ""
    out: dict[tuple[str, ...], np.ndarray] = {}
    filled: dict[tuple[str, ...], set] = {}
    state = {"kind": kind}

    def want(key: tuple[str, ...]) -> bool:
        if state["kind"] == "auto":
            train_state = key[:1] in (("step",), ("opt_state",)) or (
                key[: len(_TRAINSTATE_PREFIX)] == _TRAINSTATE_PREFIX
            )
            state["kind"] = "trainstate" if train_state else "params"
        return _strip(state["kind"], key) is not None

    for key, array in iter_streaming_checkpoint(path, want=want):
        if array is None:
            continue
        pkey = _strip(state["kind"], key)
        name = "/".join(key)
        hit = _target(pkey)
        if hit is None or hit[0] not in shapes:
            raise LwmError(
                f"{path}: unexpected tensor {name} (shape {tuple(array.shape)}): not a parameter "
                f"of the LLaMA{where} (a vision checkpoint needs a preset with vision_vocab_size)"
            )
        lpath, layer, stacked = hit
        state["scanned"] = state.get("scanned", False) or stacked
        lwm_file_shape, lwm_shape = shapes[lpath]
        is_block = lpath[0] == "blocks"
        want_shape = ((layers,) if stacked else ()) + lwm_file_shape
        if tuple(array.shape) != want_shape:
            raise LwmError(
                f"{path}: tensor {name} has shape {tuple(array.shape)}, "
                f"expected {want_shape}{where}"
            )
        if layer is not None and layer >= layers:
            raise LwmError(f"{path}: unexpected tensor {name}: the preset has {layers} layers")
        if lpath not in out:
            full = ((layers,) if is_block else ()) + lwm_shape
            out[lpath] = np.empty(full, dtype)
            filled[lpath] = set()
        slots = set(range(layers)) if stacked else ({layer} if is_block else {None})
        if slots & filled[lpath]:
            raise LwmError(f"{path}: tensor {name} given twice (scanned and per-layer keys?)")
        _write_lwm(lpath, array, out[lpath][layer] if layer is not None else out[lpath])
        filled[lpath] |= slots
        del array
    missing = []
    for lpath, (file_shape, _) in shapes.items():
        want_slots = set(range(layers)) if lpath[0] == "blocks" else {None}
        if filled.get(lpath, set()) != want_slots:
            missing.append((lpath, file_shape, sorted(want_slots - filled.get(lpath, set()))))
    if missing:
        lpath, file_shape, slots = missing[0]
        layer = slots[0] if slots and slots[0] is not None else None
        if lpath[0] == "blocks" and state.get("scanned", False) and len(slots) == layers:
            layer, file_shape = None, (layers, *file_shape)  # the file is scanned: say it so
        lwm_key = _lwm_key_name(lpath, layer)
        raise LwmError(
            f"{path}: tensor {lwm_key} (shape {file_shape}) missing ({len(missing)} parameters "
            f"incomplete){where}"
        )
    return _nest(out, cfg)


def _lwm_key_name(lpath: tuple[str, ...], layer: int | None) -> str:
    inverse = {
        ("embed", "text"): "transformer/wte/embedding",
        ("embed", "vision"): "transformer/vte/embedding",
        ("final_norm", "scale"): "transformer/ln_f/kernel",
        ("lm_head",): "lm_head/kernel",
        ("vision_head",): "vision_head/kernel",
    }
    if lpath in inverse:
        return inverse[lpath]
    rest = {v: k for k, v in _BLOCK_KEYS.items()}[lpath[1:]]
    return f"transformer/h/{'scan_decoder' if layer is None else layer}/{'/'.join(rest)}"


def _nest(flat: dict[tuple[str, ...], np.ndarray], cfg: ModelConfig) -> dict:
    tree: dict = {}
    for lpath, x in flat.items():
        if lpath[0] == "blocks" and not cfg.scan_layers:
            for i in range(cfg.num_layers):  # views of the stacked buffer: no copy
                node = tree.setdefault("blocks", {}).setdefault(str(i), {})
                for k in lpath[1:-1]:
                    node = node.setdefault(k, {})
                node[lpath[-1]] = x[i]
            continue
        node = tree
        for k in lpath[:-1]:
            node = node.setdefault(k, {})
        node[lpath[-1]] = x
    return tree


def convert_from_lwm(
    spec: str,
    out_dir: str | os.PathLike,
    cfg: ModelConfig,
    *,
    preset: str = "",
) -> pathlib.Path:
    """Converts an LWM streaming checkpoint into an lwm model checkpoint at `out_dir` (atomic:
    nothing is written unless every tensor was read and checked)."""
    from lwm.interop.hf_convert import atomic_output_dir
    from lwm.models.io import save_params

    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LwmError(f"output directory {out} already exists and is not empty; refusing")
    import jax

    params = read_lwm_params(spec, cfg, preset=preset)
    # As jax arrays on the CPU device (aliasing the numpy buffers, no copy), orbax writes them
    # without the full host copy it makes of numpy leaves (measured: output x2.4 -> x1.5 peak).
    params = jax.tree.map(lambda x: jax.device_put(x, jax.devices("cpu")[0]), params)
    _, src = parse_load_spec(spec)
    with atomic_output_dir(out) as tmp:
        save_params(
            tmp, params, cfg, metadata={"source": "lwm", "lwm_checkpoint": str(src.resolve())}
        )
    return out
