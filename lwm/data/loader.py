"""Training data: a grain pipeline over a built dataset, packed into fixed-length rows.

    source (array_record via TFDS) -> shard by process -> shuffle (reseeded per epoch) -> repeat
    -> pack (first_fit / greedy / pad, segment ids, per-segment positions) -> batch -> prefetch

Each data shard (a process, or a group of processes holding the same batch rows) reads a disjoint
1/n of the examples. Iterator state is a small JSON dict (stream position and the packer's pending
pieces), so a restored iterator yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import atexit
import copy
import pathlib
import queue
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from lwm.data.config import DataConfig
from lwm.data.json_input import loads_bounded
from lwm.data.packed_rows import PackedRows, StreamInfo
from lwm.data.packing import BATCH_KEYS
from lwm.data.split import Subset, select_records
from lwm.errors import LwmError

# ----------------------------------------------------------------------------- dataset access


def _dataset_dir(path: str | pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(path)
    if not str(path):
        raise LwmError("data.path is not set (a directory written by `lwm data build`)")
    if not (p / "dataset_info.json").is_file():
        raise LwmError(f"{p} is not a dataset built by `lwm data build` (no dataset_info.json)")
    return p


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
    """Our build statistics (token counts, largest ids, fields, tokenizer) of a built dataset."""
    p = _dataset_dir(path) / "metadata.json"
    if not p.is_file():
        return {}
    try:
        meta = loads_bounded(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: malformed or nested too deeply
        raise LwmError(f"{p}: not valid JSON ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise LwmError(f"{p}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _one_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def open_source(path: str | pathlib.Path, split: str = "train"):
    """Random-access source of decoded examples (dicts of numpy arrays), read by TFDS from the
    array_record shards (no TensorFlow involved)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(_dataset_dir(path)))
    sources = builder.as_data_source()
    if split not in sources:
        raise LwmError(f"dataset {path} has no split {split!r}; it has {sorted(sources)}")
    return sources[split]


def check_vocab(path: str | pathlib.Path, text_vocab_size: int, vision_vocab_size: int) -> None:
    """Refuses a dataset holding ids outside the model's vocabularies (before any training)."""
    meta = read_metadata(path)
    max_text, max_vision = meta.get("max_text_id", -1), meta.get("max_vision_id", -1)
    if text_vocab_size > 0 and max_text >= text_vocab_size:
        raise LwmError(
            f"dataset {path} holds text token id {max_text}, outside the model's vocabulary "
            f"[0, {text_vocab_size}) (was it built with a different tokenizer?)"
        )
    if max_vision >= 0 and vision_vocab_size <= 0 and text_vocab_size > 0:
        raise LwmError(f"dataset {path} holds vision tokens but the model has no vision vocabulary")
    if vision_vocab_size > 0 and max_vision >= vision_vocab_size:
        raise LwmError(
            f"dataset {path} holds vision code {max_vision}, outside the model's vision "
            f"vocabulary [0, {vision_vocab_size})"
        )


def example_stream(
    source, *, seed: int, shuffle: bool, num_epochs: int, shard_index: int, shard_count: int
) -> grain.MapDataset:
    """The examples this shard reads, in order: element k of the (possibly endless) stream."""
    if not 0 <= shard_index < shard_count:
        raise LwmError(f"process index {shard_index} outside [0, {shard_count})")
    if len(source) < shard_count:
        raise LwmError(f"dataset has {len(source)} examples, fewer than {shard_count} data shards")
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs or None)


# ----------------------------------------------------------------------------- host iterator


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _halt_all() -> None:
    # A reader thread still inside array_record at interpreter exit aborts the process.
    for it in list(_LIVE):
        it.close()


class HostBatchIterator(Iterator[dict[str, np.ndarray]]):
    """Numpy batches `[batch_size, seq_len]` of this data shard, with get_state / set_state.

    With `prefetch > 0` a daemon thread prepares batches ahead (numpy and array_record release the
    GIL, and the device step runs meanwhile); each queued batch carries the state *after* it, so
    `get_state` is exact whatever the thread has read ahead.
    """

    def __init__(self, ds: grain.IterDataset, prefetch: int = 0):
        self._it = iter(ds)
        self._prefetch = prefetch
        self._state = _to_json(self._it.get_state())
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(
            target=self._produce, args=(self._queue, self._stop), daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = (next(self._it), _to_json(self._it.get_state()), None)
            except StopIteration:
                item = (None, None, StopIteration())
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                item = (None, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __next__(self) -> dict[str, np.ndarray]:
        if not self._prefetch:
            batch = next(self._it)
            self._state = _to_json(self._it.get_state())
            return batch
        if self._thread is None:
            self._start()
        batch, state, err = self._queue.get()
        if err is not None:
            self._halt()
            raise err
        self._state = state
        return batch

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._halt()
        self._it.set_state(copy.deepcopy(dict(state)))
        self._state = _to_json(self._it.get_state())

    def close(self) -> None:
        self._halt()

    def __del__(self):
        try:
            self._halt()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _to_json(x: Any) -> Any:
    """States must survive json.dumps (numpy ints from grain become Python ints)."""
    if isinstance(x, Mapping):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_json(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    return x


def _stack(rows) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def make_host_iterator(
    data_cfg: DataConfig | Mapping[str, Any],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    subset: Subset = "train",
    name: str = "data",
) -> HostBatchIterator:
    """Numpy batches of `batch_size` packed rows for data shard `shard_index` of `shard_count`,
    of the training records or (`subset="eval"`) the validation split (see lwm.data.split).
    `name` starts the error raised when every example is dropped (e.g. "stages[1] data")."""
    cfg = DataConfig.from_dict(data_cfg)
    if seq_len < 1 or batch_size < 1:
        raise LwmError(f"seq_len and batch size must be positive, got {seq_len}, {batch_size}")
    separate_eval = subset == "eval" and bool(cfg.eval_path)
    path = cfg.eval_path if separate_eval else cfg.path
    check_vocab(path, cfg.text_vocab_size, cfg.vision_vocab_size)
    source = open_source(path, cfg.split)
    if not separate_eval:  # with a separate eval dataset, training reads all of `path`
        source = select_records(source, 0.0 if cfg.eval_path else cfg.eval_fraction, subset)
    stream = example_stream(
        source,
        seed=seed,
        shuffle=cfg.shuffle,
        num_epochs=cfg.num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    fingerprint = {
        "seed": seed,
        "shard": [shard_index, shard_count],
        "num_examples": len(source),
        "shuffle": cfg.shuffle,
    }
    if cfg.eval_fraction and not separate_eval:  # a state is only valid for the same split
        fingerprint["eval_fraction"] = cfg.eval_fraction
    info = StreamInfo(
        name, len(range(shard_index, len(source), shard_count)), (shard_index, shard_count)
    )
    ds: grain.IterDataset = PackedRows(stream, cfg, seq_len, fingerprint, info)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)
    return HostBatchIterator(ds, prefetch=cfg.prefetch)


# ----------------------------------------------------------------------------- global arrays


def batch_sharding(mesh, global_batch_size: int, seq_len: int):
    """NamedSharding of a `[B, T]` batch: logical ("batch", "length") from the rules table."""
    from lwm.sharding import logical_to_sharding

    return logical_to_sharding(("batch", "length"), (global_batch_size, seq_len), mesh)


def _process_block(sharding, global_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of the global batch held by this process's devices."""
    import jax

    idx = [
        ind
        for d, ind in sharding.devices_indices_map(global_shape).items()
        if d.process_index == jax.process_index()
    ]
    out = []
    for dim in range(2):
        covered = set()
        for ind in idx:
            s = ind[dim]
            covered.update(range(*s.indices(global_shape[dim])))
        lo, hi = min(covered), max(covered) + 1
        if len(covered) != hi - lo:
            raise LwmError("this process's batch rows are not contiguous on the mesh")
        out.append(slice(lo, hi))
    return out[0], out[1]


class GlobalBatchIterator(Iterator[dict[str, Any]]):
    """Batches as global jax Arrays sharded ("batch", "length") over the mesh."""

    def __init__(self, host: HostBatchIterator, sharding, global_shape, cols: slice):
        self.host = host
        self._sharding = sharding
        self._global_shape = global_shape
        self._cols = cols

    def __next__(self) -> dict[str, Any]:
        import jax

        local = next(self.host)
        return {
            k: jax.make_array_from_process_local_data(
                self._sharding, np.ascontiguousarray(v[:, self._cols]), self._global_shape
            )
            for k, v in local.items()
        }

    def get_state(self) -> dict[str, Any]:
        return self.host.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.host.set_state(state)

    def close(self) -> None:
        self.host.close()


def make_train_iterator(
    data_cfg: DataConfig | Mapping[str, Any],
    *,
    seq_len: int,
    global_batch_size: int,
    mesh,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    subset: Subset = "train",
    name: str = "data",
) -> GlobalBatchIterator:
    """The trainer's iterator: global `[global_batch_size, seq_len]` jax Arrays per key
    (`subset="eval"`: of the validation split).

    The data shard of this process is derived from the mesh (processes holding the same batch rows
    read the same data); `process_index` / `process_count` override it. `name` starts the error
    raised when every example is dropped (`min_example_len`, `long_examples="drop"`).
    """
    import jax

    sharding = batch_sharding(mesh, global_batch_size, seq_len)
    shape = (global_batch_size, seq_len)
    rows, cols = _process_block(sharding, shape)
    local_rows = rows.stop - rows.start
    if global_batch_size % local_rows:
        raise LwmError(f"global batch {global_batch_size} does not split into {local_rows} rows")
    shard_count = global_batch_size // local_rows
    shard_index = rows.start // local_rows
    if process_index is not None or process_count is not None:
        shard_index = jax.process_index() if process_index is None else process_index
        shard_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % shard_count:
            raise LwmError(
                f"global batch {global_batch_size} not divisible by {shard_count} processes"
            )
        if global_batch_size // shard_count != local_rows:
            raise LwmError(
                f"{shard_count} data shards of {global_batch_size // shard_count} rows do not "
                f"match the mesh, which gives this process {local_rows} rows"
            )
    host = make_host_iterator(
        data_cfg,
        seq_len=seq_len,
        batch_size=local_rows,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        subset=subset,
        name=name,
    )
    return GlobalBatchIterator(host, sharding, shape, cols)
