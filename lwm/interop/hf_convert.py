"""`lwm convert from-hf` / `to-hf`: HF model directories (LLaMA, Qwen2, Mistral: see
`lwm.interop.hf_config.HF_FAMILIES`) <-> lwm model checkpoints.

Reading uses safetensors' numpy API one tensor at a time (no torch at run time). Outputs are written
into a temporary sibling directory and renamed into place at the end, so a failed conversion leaves
nothing at OUT_DIR; an existing non-empty OUT_DIR is refused. A tokenizer in the source directory
(tokenizer.json with its side files, or tokenizer.model) is copied along, both ways, so the
converted model runs without `--tokenizer`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from lwm.dtypes import to_numpy_dtype
from lwm.errors import LwmError
from lwm.interop.hf_config import (
    VISION_SIDECAR,
    model_config_from_hf,
    model_config_to_hf,
    vision_sidecar,
)
from lwm.interop.hf_weights import hf_tensor_names, params_from_hf, params_to_hf
from lwm.io import FILE_MODE, write_json

if TYPE_CHECKING:
    from lwm.data.tokenizer import Tokenizer

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary directory that becomes `out_dir` only if the block succeeds."""
    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LwmError(
            f"output directory {out} already exists and is not empty; refusing to overwrite"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _SafetensorsDir:
    """Lazy access to the tensors of a HF directory (single file or sharded with an index)."""

    def __init__(self, hf_dir: pathlib.Path):
        from safetensors import safe_open

        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise LwmError(f"{index}: not a valid safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
            if not files:
                if any(hf_dir.glob("*.bin")):
                    raise LwmError(
                        f"{hf_dir} holds only PyTorch .bin weights; lwm reads safetensors "
                        "(re-save with save_pretrained(safe_serialization=True))"
                    )
                raise LwmError(f"no *.safetensors files in {hf_dir}")
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            path = hf_dir / name
            if not path.is_file():
                raise LwmError(f"safetensors shard {path} listed in the index is missing")
            try:
                handle = safe_open(str(path), framework="numpy")
            except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
                raise LwmError(f"cannot read {path}: {e}") from None
            self._handles[name] = handle
            for key in handle.keys():
                self._where[key] = name

    def keys(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise LwmError(f"tensor {name} missing from the checkpoint")
        return self._handles[self._where[name]].get_tensor(name)


def find_tokenizer(directory: pathlib.Path, notes: list[str] | None = None) -> Tokenizer | None:
    """The tokenizer in `directory` (`lwm.data.tokenizer.load_tokenizer`), or None when it has
    none. One that cannot be read is skipped, with why appended to `notes`: the weights convert
    either way."""
    from lwm.data.tokenizer import load_tokenizer

    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    try:
        return load_tokenizer(directory)
    except Exception as e:  # noqa: BLE001 - any reader failure only costs the copy
        if notes is not None:
            notes.append(f"tokenizer in {directory} not copied: {str(e).splitlines()[0]}")
        return None


def copy_tokenizer(src: pathlib.Path, dst: pathlib.Path, notes: list[str] | None = None) -> bool:
    """Copies `src`'s tokenizer files into `dst` (`save_tokenizer`); False when there is none."""
    from lwm.data.tokenizer import save_tokenizer

    tok = find_tokenizer(src, notes)
    if tok is None:
        return False
    save_tokenizer(tok, dst)
    return True


def read_hf_config(hf: pathlib.Path) -> dict[str, Any]:
    """`hf/config.json` as a dict (one-line LwmErrors for a missing or malformed file)."""
    config_path = hf / "config.json"
    if not config_path.is_file():
        raise LwmError(f"{config_path} not found")
    try:
        hf_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LwmError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(hf_config, dict):
        raise LwmError(f"{config_path} must hold a JSON object, got {type(hf_config).__name__}")
    return hf_config


def convert_from_hf(
    hf_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    param_dtype: str = "float32",
    notes: list[str] | None = None,
) -> pathlib.Path:
    """Converts a HF model directory into an lwm model checkpoint at `out_dir`, with its
    tokenizer files when it has some (what was skipped and why is appended to `notes`)."""
    from lwm.models.io import save_params

    hf = pathlib.Path(hf_dir).expanduser()
    if not hf.is_dir():
        raise LwmError(f"HF model directory not found: {hf}")
    cfg = model_config_from_hf(read_hf_config(hf)).replace(param_dtype=param_dtype)
    tensors = _SafetensorsDir(hf)
    expected = set(hf_tensor_names(cfg))
    if cfg.tie_word_embeddings:
        expected_optional = {"lm_head.weight"}
    else:
        expected_optional = set()
    unexpected = sorted(
        k
        for k in tensors.keys() - expected - expected_optional
        if not k.endswith(_IGNORED_SUFFIXES)
    )
    if unexpected:
        raise LwmError(
            f"unexpected tensor {unexpected[0]} ({len(unexpected)} in all): the checkpoint has "
            "parameters lwm's model of this family cannot represent (biases? another "
            "architecture?)"
        )
    missing = sorted(expected - tensors.keys())
    if missing:
        raise LwmError(f"tensor {missing[0]} missing from the checkpoint ({len(missing)} missing)")
    params = params_from_hf(tensors.get, cfg, dtype=to_numpy_dtype(param_dtype))
    out = pathlib.Path(out_dir).expanduser().resolve()
    with atomic_output_dir(out) as tmp:
        save_params(tmp, params, cfg, metadata={"source": "hf", "hf_dir": str(hf.resolve())})
        copy_tokenizer(hf, tmp, notes)
    return out


def convert_to_hf(
    ckpt_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    dtype: str = "float32",
    notes: list[str] | None = None,
) -> pathlib.Path:
    """Writes `config.json` + `model.safetensors` that transformers loads (LlamaForCausalLM, or
    Qwen2ForCausalLM for a model with q/k/v biases) and the checkpoint's tokenizer files when it
    has some (its BOS/EOS ids then go into config.json); a vision model also gets
    `lwm_vision.json` (the vision ids' offset, end-of-frame/video ids)."""
    from safetensors.numpy import save_file

    from lwm.models.io import load_params_numpy

    params, cfg = load_params_numpy(ckpt_dir)
    hf_config = model_config_to_hf(cfg, torch_dtype=dtype)
    ckpt = pathlib.Path(ckpt_dir).expanduser()
    tok = find_tokenizer(ckpt, notes) if ckpt.is_dir() else None
    if tok is not None:
        hf_config.update(bos_token_id=tok.bos_id, eos_token_id=_one_or_list(tok.eos_ids))
    tensors = params_to_hf(
        params, cfg.replace(scan_layers=_is_stacked(params, cfg)), dtype=to_numpy_dtype(dtype)
    )
    out = pathlib.Path(out_dir).expanduser().resolve()
    with atomic_output_dir(out) as tmp:
        write_json(tmp / "config.json", hf_config, indent=2)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if cfg.has_vision:
            write_json(tmp / VISION_SIDECAR, vision_sidecar(cfg), indent=2)
        if tok is not None:
            from lwm.data.tokenizer import save_tokenizer

            save_tokenizer(tok, tmp)
        for f in tmp.iterdir():  # safetensors writes 0600; these files are made to be shared
            os.chmod(f, FILE_MODE)
    return out


def _one_or_list(ids: tuple[int, ...]) -> int | list[int] | None:
    return None if not ids else ids[0] if len(ids) == 1 else list(ids)


def _is_stacked(params: dict, cfg) -> bool:
    """Whether the stored blocks are stacked (saved from a scan_layers model)."""
    return "0" not in params["blocks"] and 0 not in params["blocks"]
