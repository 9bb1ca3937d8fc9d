"""Saved prefixes: a video's filled KV cache on disk (`lwm prefill`), answered from later
(`lwm chat --prefix`) without the video or the VQGAN.

A prefix directory holds
  - `cache/0/`: an orbax checkpoint (`lwm.checkpoint.Checkpointer`, step 0) of the `Prefix`: every
    field of its cache dataclass (whatever `cache_class` the config picks: keys and values, the
    scales of an 8-bit cache, the valid mask, the next positions; a per-layer field as
    `{"0": layer 0, ...}`) and the last hidden state. The arrays are written sharded as they
    live on the mesh (each host writes its own shards) and read back directly into the
    shardings of the loading mesh, which may differ.
  - `manifest.json` (`PrefixManifest`), written last: what made the prefix and how to use it.

Loading checks, each a one-line refusal naming both sides: the kv dtype, the tokenizer, the
template and the model config (before any weight is read) and the parameters (once the model is
loaded); see `lwm.inference.prefix_fingerprint` for what each fingerprint covers. A damaged
prefix (a truncated or deleted array file, a missing item, a broken manifest) is reported the
way a damaged checkpoint is: one line naming what failed to read; a directory without
`manifest.json` is an unfinished `lwm prefill` (nothing is ever read from it).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from lwm.errors import LwmError

MANIFEST = "manifest.json"
CACHE_DIR = "cache"
FORMAT = 1
"""Version of the prefix layout; a prefix of another version is refused."""


class PrefixError(LwmError):
    """A saved prefix that is missing, damaged or made by another model / tokenizer / template /
    kv dtype."""


@dataclasses.dataclass
class PrefixManifest:
    """What made a saved prefix (identity, checked on load) and what it holds."""

    model: dict
    """`config_sha256`, `params_sha256` (see `prefix_fingerprint`) and the `checkpoint` path
    (informational)."""
    tokenizer_sha256: str
    """sha256 of the tokenizer's files."""
    template: dict
    """`name` (`--template`: auto, a JSON path), `system` (`--system` or None) and `sha256` of
    the rendered template fields."""
    kv_dtype: str
    """Storage dtype of the cache's keys/values (`auto` resolved: float32, bfloat16, int8, ...)."""
    video: dict
    """`path` as given, `sha256` and `bytes` of the video file."""
    frames: dict
    """Frame selection (`frames`, `fps`, `start`, `end`), `kept_indices` / `kept_timestamps`
    (positions in the selected frames and seconds) and, with `drop_static`, the threshold and
    `dropped_indices` / `dropped_timestamps`."""
    num_tokens: int
    """Real tokens in the prefix (the position of the first question token)."""
    vision_tokens: int
    """Vision tokens among them (codes and frame separators)."""
    length: int
    """Cache slots used (padding included)."""
    capacity: int
    """Cache slots allocated."""
    hidden: dict
    """`shape` and `dtype` of the prefix's last hidden state."""
    mesh: dict
    """Mesh axis sizes it was saved from (informational: any mesh may load it)."""
    lwm_version: str
    format: int = FORMAT

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> PrefixManifest:
        if not isinstance(data, dict):
            raise PrefixError(f"{where} is damaged: {MANIFEST} is not a JSON object")
        if data.get("format") != FORMAT:
            raise PrefixError(
                f"{where} has prefix format {data.get('format')!r}; this lwm reads format "
                f"{FORMAT} (make it again with lwm prefill)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise PrefixError(f"{where} is damaged: {MANIFEST} lacks {', '.join(missing)}")
        return cls(**{k: data[k] for k in names})


def make_manifest(
    ctx: Any,
    *,
    model: Any,
    tokenizer: Any,
    template: Any,
    template_name: str | None,
    system: str | None,
    checkpoint: str,
    selection: dict,
    mesh: Any = None,
) -> PrefixManifest:
    """The manifest of the prefix of `ctx` (a `lwm.inference.video_qa.VideoContext`)."""
    import lwm
    from lwm.inference import prefix_fingerprint as fp

    prefix = ctx.prefix
    video = pathlib.Path(ctx.path)
    return PrefixManifest(
        model={
            "config_sha256": fp.config_fingerprint(model.config),
            "params_sha256": fp.params_fingerprint(model),
            "checkpoint": str(checkpoint),
        },
        tokenizer_sha256=fp.tokenizer_fingerprint(tokenizer),
        template={
            "name": template_name or "auto",
            "system": system,
            "sha256": fp.template_fingerprint(template),
        },
        kv_dtype=resolved_kv_dtype(model.config),
        video={
            "path": str(ctx.path),
            "sha256": fp.file_sha256(video),
            "bytes": video.stat().st_size,
        },
        frames={**selection, **ctx.frame_record()},
        num_tokens=int(prefix.num_tokens),
        vision_tokens=int(ctx.vision_tokens),
        length=int(prefix.length),
        capacity=int(prefix.cache.capacity),
        hidden={"shape": list(prefix.hidden.shape), "dtype": str(prefix.hidden.dtype)},
        mesh={} if mesh is None else {k: int(v) for k, v in mesh.shape.items()},
        lwm_version=lwm.__version__,
    )


def resolved_kv_dtype(cfg: Any) -> str:
    """The `--kv-dtype` name of `cfg`'s cache (`auto` resolved to the compute dtype's name), not
    its storage dtype (bf16 and fp8 may be stored as raw bits)."""
    import jax.numpy as jnp

    name = getattr(cfg, "kv_dtype", "auto")
    return jnp.dtype(cfg.dtype).name if name == "auto" else name


def read_manifest(directory: str | pathlib.Path) -> PrefixManifest:
    """The manifest of a saved prefix; one-line errors for a missing, unfinished or damaged one."""
    root = pathlib.Path(directory).expanduser()
    if not root.is_dir():
        raise PrefixError(f"saved prefix not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        hint = (
            "an lwm prefill that did not finish?"
            if (root / CACHE_DIR).exists()
            else "not a directory written by lwm prefill"
        )
        raise PrefixError(f"{root} has no {MANIFEST} ({hint})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = " ".join(str(e).split())[:120]
        raise PrefixError(
            f"saved prefix {root} is damaged: {MANIFEST} unreadable ({why})"
        ) from None
    return PrefixManifest.from_json(data, f"saved prefix {root}")


def check_identity(
    manifest: PrefixManifest,
    where: str,
    *,
    kv_dtype: str | None = None,
    tokenizer_sha256: str | None = None,
    template_sha256: str | None = None,
    config_sha256: str | None = None,
    params_sha256: str | None = None,
) -> None:
    """Refuses (one line) a prefix whose identity differs from what is given (None = unchecked)."""
    if kv_dtype is not None and kv_dtype != manifest.kv_dtype:
        raise PrefixError(
            f"{where} holds a {manifest.kv_dtype} KV cache, this run uses {kv_dtype} "
            f"(pass --kv-dtype {manifest.kv_dtype}, or make the prefix again)"
        )
    if tokenizer_sha256 is not None and tokenizer_sha256 != manifest.tokenizer_sha256:
        raise PrefixError(f"{where} was made with another tokenizer (its files differ)")
    if template_sha256 is not None and template_sha256 != manifest.template["sha256"]:
        made = manifest.template.get("name") or "auto"
        system = manifest.template.get("system")
        with_system = f" --system {system!r}" if system is not None else ""
        raise PrefixError(
            f"{where} was made with another prompt template (--template {made}{with_system}); "
            "pass the same --template and --system, or make the prefix again"
        )
    model = manifest.model
    if config_sha256 is not None and config_sha256 != model.get("config_sha256"):
        raise PrefixError(
            f"{where} was made by another model ({model.get('checkpoint')}: its config differs)"
        )
    if params_sha256 is not None and params_sha256 != model.get("params_sha256"):
        raise PrefixError(
            f"{where} was made by another model ({model.get('checkpoint')}: its weights differ)"
        )


def _cache_tree(cache: Any) -> dict:
    """A cache dataclass as nested dicts (per-layer tuples keyed "0", "1", ...)."""
    out = {}
    for f in dataclasses.fields(cache):
        value = getattr(cache, f.name)
        out[f.name] = (
            {str(i): x for i, x in enumerate(value)} if isinstance(value, tuple) else value
        )
    return out


def _cache_from_tree(cls: type, tree: dict) -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        value = tree[f.name]
        kw[f.name] = (
            tuple(value[str(i)] for i in range(len(value))) if isinstance(value, dict) else value
        )
    return cls(**kw)


def save_prefix(directory: str | pathlib.Path, prefix: Any, manifest: PrefixManifest) -> None:
    """Writes `prefix` (a `lwm.inference.sampler.Prefix`) and `manifest` under `directory`.
    Every process of a job calls it (orbax writes each host's shards); the manifest is written
    last, by process 0, so a directory with a manifest holds a complete prefix."""
    import jax

    from lwm.checkpoint import Checkpointer
    from lwm.io import write_json

    root = pathlib.Path(directory)
    state = {"cache": _cache_tree(prefix.cache), "hidden": prefix.hidden}
    with Checkpointer(root / CACHE_DIR, keep=None, async_save=False) as ckpt:
        ckpt.save(0, state, metadata={"lwm_prefix": FORMAT}, force=True)
    if jax.process_index() == 0:
        write_json(root / MANIFEST, manifest.to_json())


def load_prefix(
    directory: str | pathlib.Path, manifest: PrefixManifest, config: Any, mesh: Any = None
) -> Any:
    """The saved `Prefix` (cache and hidden state read straight into their shardings on `mesh`)
    for a model of `config`; call `check_identity` first. A damaged prefix is one `PrefixError`
    line naming what failed to read."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

    from lwm.cache.kv_cache import cache_specs
    from lwm.checkpoint import Checkpointer, CheckpointError
    from lwm.inference.sampler import Prefix

    root = pathlib.Path(directory).expanduser()
    where = f"saved prefix {root}"
    if resolved_kv_dtype(config) != manifest.kv_dtype:  # the cache layout follows the config
        check_identity(manifest, where, kv_dtype=resolved_kv_dtype(config))
    specs = cache_specs(config, 1, int(manifest.capacity), mesh)
    if mesh is None:
        one = SingleDeviceSharding(jax.devices()[0])
        specs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), specs)
        hidden_sharding = one
    else:
        hidden_sharding = NamedSharding(mesh, PartitionSpec())
    hidden = jax.ShapeDtypeStruct(
        tuple(manifest.hidden["shape"]), manifest.hidden["dtype"], sharding=hidden_sharding
    )
    target = {"cache": _cache_tree(specs), "hidden": hidden}
    if not (root / CACHE_DIR).is_dir():
        raise PrefixError(f"{where} is damaged: {CACHE_DIR}/ missing")
    try:
        with Checkpointer(
            root / CACHE_DIR, keep=None, async_save=False, readonly=True, log=lambda _: None
        ) as ckpt:
            state, _, _ = ckpt.restore(0, abstract_state=target)
    except CheckpointError as e:
        raise PrefixError(f"{where} is damaged: {e}") from None
    cache = _cache_from_tree(type(specs), state["cache"])
    return Prefix(cache, int(manifest.length), int(manifest.num_tokens), state["hidden"])
