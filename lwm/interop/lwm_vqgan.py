"""LWM's released VQGAN weights (a pickled flax-linen param tree) -> an lwm VQGAN checkpoint.

LWM's `lwm/vqgan.py` is a flax-linen `@nn.compact` model, so its parameter names are linen's
automatic `<Class>_<n>` names, counted per class within each parent module:

| LWM path                                               | lwm path                           |
|--------------------------------------------------------|------------------------------------|
| encoder/Conv_0                                         | encoder.conv_in                    |
| encoder/DownsamplingBlock_{l}/ResnetBlock_{r}/...      | encoder.down.{l}.blocks.{r}.*      |
| encoder/DownsamplingBlock_{l}/Downsample_0/Conv_0      | encoder.down.{l}.downsample        |
| encoder/MidBlock_0/ResnetBlock_{r}                     | encoder.mid.{r}                    |
| encoder/GroupNorm_0, encoder/Conv_1                    | encoder.norm_out, encoder.conv_out |
| quant_conv, post_quant_conv                            | quant_conv, post_quant_conv        |
| quantize/embeddings                                    | quantizer.codebook                 |
| decoder/Conv_0, decoder/MidBlock_0/ResnetBlock_{r}     | decoder.conv_in, decoder.mid.{r}   |
| decoder/UpsamplingBlock_{k}/ResnetBlock_{r}            | decoder.up.{L-1-k}.blocks.{r}      |
| decoder/UpsamplingBlock_{k}/Upsample_0/Conv_0          | decoder.up.{L-1-k}.upsample        |
| decoder/GroupNorm_0, decoder/Conv_1                    | decoder.norm_out, decoder.conv_out |

Inside a ResnetBlock: GroupNorm_0/Conv_0/GroupNorm_1/Conv_1 are norm1/conv1/norm2/conv2 and
Conv_2 (present only when the width changes) is the 1x1 shortcut. LWM's decoder creates its
UpsamplingBlocks coarsest first, so its index k counts from the top level down. Conv kernels are
HWIO in both; GroupNorm params are scale/bias in both. lwm's `quantizer.usage` (a training EMA
LWM does not have) is set to 1 so fine-tuning does not restart every pretrained code.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from lwm.errors import LwmError
from lwm.video.config import VQGANConfig

_RES_NAMES = {
    "GroupNorm_0": "norm1",
    "Conv_0": "conv1",
    "GroupNorm_1": "norm2",
    "Conv_1": "conv2",
    "Conv_2": "shortcut",
}


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, (*prefix, str(k))))
        return out
    return {prefix: tree}


def lwm_to_lwm_path(path: tuple[str, ...], num_levels: int) -> tuple[str, ...] | None:
    """LWM param path (tuple of names) -> lwm's `nnx.state` path (strings); None if unknown."""

    def res_block(rest):
        if len(rest) == 2 and rest[0] in _RES_NAMES:
            return (_RES_NAMES[rest[0]], rest[1])
        return None

    def index(name, prefix):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return int(name[len(prefix) :])
        return None

    head, rest = path[0], path[1:]
    if head in ("quant_conv", "post_quant_conv") and len(rest) == 1:
        return (head, rest[0])
    if head == "quantize" and rest == ("embeddings",):
        return ("quantizer", "codebook")
    if head not in ("encoder", "decoder") or len(rest) < 2:
        return None
    top = rest[0]
    simple = {"Conv_0": "conv_in", "GroupNorm_0": "norm_out", "Conv_1": "conv_out"}
    if top in simple and len(rest) == 2:
        return (head, simple[top], rest[1])
    if top == "MidBlock_0" and len(rest) >= 3:
        r = index(rest[1], "ResnetBlock_")
        tail = res_block(rest[2:])
        return None if r is None or tail is None else (head, "mid", str(r), *tail)
    block, resample = (
        ("DownsamplingBlock_", "Downsample_0")
        if head == "encoder"
        else ("UpsamplingBlock_", "Upsample_0")
    )
    k = index(top, block)
    if k is None or k >= num_levels or len(rest) < 3:
        return None
    level = k if head == "encoder" else num_levels - 1 - k
    group = "down" if head == "encoder" else "up"
    if rest[1] == resample and len(rest) == 4 and rest[2] == "Conv_0":
        return (head, group, str(level), "downsample" if head == "encoder" else "upsample", rest[3])
    r = index(rest[1], "ResnetBlock_")
    tail = res_block(rest[2:])
    if r is None or tail is None:
        return None
    return (head, group, str(level), "blocks", str(r), *tail)


def lwm_params_to_state(params: Any, cfg: VQGANConfig, *, where: str = "weights") -> dict:
    """LWM's param tree (dicts of arrays) -> lwm's VQGAN state tree (string keys), checked
    against `cfg`'s shapes: a missing, extra or mis-shaped parameter is a one-line error."""
    from flax import nnx

    from lwm.video.vqgan import VQGAN
    from lwm.video.vqgan_checkpoint import state_tree

    if not isinstance(params, dict):
        raise LwmError(f"{where}: expected a dict of parameters, got {type(params).__name__}")
    if set(params) == {"params"} and isinstance(params["params"], dict):
        params = params["params"]  # saved as {'params': ...} (the variables dict)
    model = nnx.eval_shape(lambda: VQGAN(cfg, rngs=nnx.Rngs(0)))
    want = {k: v for k, v in _flatten(state_tree(model)).items()}
    out: dict[tuple[str, ...], np.ndarray] = {}
    extra = []
    for src, value in _flatten(params).items():
        dst = lwm_to_lwm_path(src, len(cfg.channel_multipliers)) if src else None
        if dst is None or dst not in want:
            extra.append("/".join(src))
            continue
        arr = np.asarray(value)
        if tuple(arr.shape) != tuple(want[dst].shape):
            raise LwmError(
                f"{where}: {'/'.join(src)} has shape {tuple(arr.shape)}, VQGAN preset "
                f"{cfg.name!r} expects {tuple(want[dst].shape)} (wrong --config.vqgan.* ?)"
            )
        out[dst] = arr.astype(want[dst].dtype)
    usage = ("quantizer", "usage")
    out[usage] = np.ones(want[usage].shape, want[usage].dtype)
    missing = sorted(".".join(k) for k in set(want) - set(out))
    if extra:
        raise LwmError(
            f"{where}: {len(extra)} parameter(s) not in LWM's VQGAN layout for preset "
            f"{cfg.name!r}, e.g. {sorted(extra)[0]}"
        )
    if missing:
        raise LwmError(
            f"{where}: {len(missing)} parameter(s) of preset {cfg.name!r} missing from the "
            f"file, e.g. lwm's {missing[0]}"
        )
    tree: dict = {}
    for path, arr in out.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = arr
    return tree


def convert_vqgan_from_lwm(
    weights: str | pathlib.Path, out_dir: str | pathlib.Path, cfg: VQGANConfig
) -> pathlib.Path:
    """Reads LWM's pickled VQGAN params (restricted unpickler) and writes an lwm VQGAN
    checkpoint (step 0, `lwm.video.vqgan_checkpoint` layout) to the new `out_dir`."""
    from lwm.checkpoint import Checkpointer
    from lwm.interop.safe_pickle import load
    from lwm.video.vqgan_checkpoint import vqgan_metadata

    out_dir = pathlib.Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LwmError(f"{out_dir}: exists and is not an empty directory (nothing overwritten)")
    state = lwm_params_to_state(load(weights), cfg, where=str(weights))
    with Checkpointer(out_dir, async_save=False) as ckpt:
        ckpt.save(
            0,
            {"model": state},
            metadata=vqgan_metadata(
                cfg, source={"format": "lwm-vqgan-pickle", "file": str(weights)}
            ),
            force=True,
        )
    return out_dir
