"""`lwm convert from-gguf FILE OUT_DIR`: a llama.cpp GGUF model -> lwm model checkpoint, with the
tokenizer the file embeds written beside it (tokenizer.json, tokenizer_config.json,
generation_config.json).

The metadata becomes a transformers config dict (`hf_config_from_gguf`) read by the same
`model_config_from_hf` as `from-hf`, and the dequantized tensors are fed under their HF names to
the same `params_from_hf`; so a GGUF converts exactly as the HF directory it was made from would
(up to the file's quantization). The output directory is written atomically, as `from-hf`'s.
"""

from __future__ import annotations

import dataclasses
import pathlib

from lwm.dtypes import to_numpy_dtype
from lwm.errors import LwmError
from lwm.interop.gguf_reader import hf_config_from_gguf, hf_name, hf_tensor_getter, read_gguf
from lwm.interop.gguf_tokenizer import write_gguf_tokenizer
from lwm.interop.hf_config import model_config_from_hf
from lwm.interop.hf_convert import atomic_output_dir
from lwm.interop.hf_weights import hf_tensor_names, params_from_hf

"""`--param-dtype` choices: the storage dtype of the converted parameters."""


@dataclasses.dataclass(frozen=True)
class GgufConversion:
    """What `convert_from_gguf` wrote."""

    out_dir: pathlib.Path
    """The new lwm checkpoint directory."""
    tokenizer_files: tuple[str, ...]
    """Files written beside the checkpoint (empty when no tokenizer could be written)."""
    tokenizer_note: str | None
    """Why the tokenizer was not written (None when it was)."""


def convert_from_gguf(
    gguf_path: str | pathlib.Path, out_dir: str | pathlib.Path, *, param_dtype: str = "float32"
) -> GgufConversion:
    """Converts a LLaMA/Qwen2-family GGUF file into an lwm model checkpoint at `out_dir`.

    Weights that cannot be converted (another architecture, an unsupported tensor type, a
    tensor lwm cannot place, a damaged file) raise LwmError and write nothing. A tokenizer lwm
    cannot rebuild does not stop the conversion; `tokenizer_note` says why it is absent.
    """
    from lwm.models.io import save_params

    dtype = to_numpy_dtype(param_dtype)
    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LwmError(
            f"output directory {out} already exists and is not empty; refusing to overwrite"
        )
    gf = read_gguf(gguf_path)
    hf_config = hf_config_from_gguf(gf)
    cfg = model_config_from_hf(hf_config).replace(param_dtype=param_dtype)
    get = hf_tensor_getter(gf, hf_config)
    expected = set(hf_tensor_names(cfg))
    extra = sorted(n for n in map(hf_name, gf.tensors) if n is not None and n not in expected)
    if extra:
        raise LwmError(
            f"unexpected tensor {extra[0]} ({len(extra)} in all): the GGUF file has parameters "
            f"this {gf.architecture} config does not use"
        )
    params = params_from_hf(get, cfg, dtype=dtype)
    meta = {
        "source": "gguf",
        "gguf_file": str(gf.path.resolve()),
        "gguf_name": str(gf.metadata.get("general.name", "")),
    }
    files: list[str] = []
    note = None
    with atomic_output_dir(out) as tmp:
        save_params(tmp, params, cfg, metadata=meta)
        try:
            files = write_gguf_tokenizer(gf, tmp)
        except LwmError as e:
            note = str(e)
    return GgufConversion(out_dir=out, tokenizer_files=tuple(files), tokenizer_note=note)
