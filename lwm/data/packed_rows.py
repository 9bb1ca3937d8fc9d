"""Packed rows of an example stream: grain's iterator over `lwm.data.packing.Packer`, with a
small JSON state (stream position and the packer's pending pieces) so that a restored iterator
yields exactly the rows an uninterrupted one would; it refuses, with one line, a stream whose every
example is dropped (`min_example_len`, `long_examples="drop"`) instead of looping forever."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from lwm.data.config import DataConfig
from lwm.data.packing import Packer, materialize_row
from lwm.errors import LwmError

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What a packed-row iterator says in errors: `name` (e.g. "stages[1] data"), the examples
    one pass over this data shard holds, and the shard."""

    name: str
    epoch_len: int
    shard: tuple[int, int] = (0, 1)


class PackedRows(grain.IterDataset):
    """Packed rows (dicts of [seq_len] arrays, see lwm.data.packing.BATCH_KEYS) of a stream."""

    def __init__(
        self,
        stream: grain.MapDataset,
        cfg: DataConfig,
        seq_len: int,
        fingerprint: dict,
        info: StreamInfo,
    ):
        super().__init__()
        self._stream = stream
        self._cfg = cfg
        self._seq_len = seq_len
        self._fingerprint = fingerprint
        self._info = info

    def __iter__(self) -> PackedRowIterator:
        return PackedRowIterator(
            self._stream, self._cfg, self._seq_len, self._fingerprint, self._info
        )

    def __str__(self) -> str:
        return f"PackedRows(seq_len={self._seq_len}, packing={self._cfg.packing})"


class PackedRowIterator(grain.DatasetIterator):
    def __init__(
        self,
        stream: grain.MapDataset,
        cfg: DataConfig,
        seq_len: int,
        fingerprint: dict,
        info: StreamInfo,
    ):
        super().__init__()
        self._info = info
        # Stream index after the last example kept: a run of drops that spans one whole aligned
        # pass means every example is dropped, and the stream (endless) would loop forever.
        self._run_start = 0
        self._dropped_lens: dict[str, int] = {}  # "short" / "long" -> extreme length seen
        self._stream = stream
        self._len = len(stream)
        self._cfg = cfg
        self._seq_len = seq_len
        self._fingerprint = fingerprint
        self._packer = Packer(
            seq_len, cfg.packing, open_rows=cfg.open_rows, long_examples=cfg.long_examples
        )
        self._next = 0  # next stream index to read
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _fetch(self, k: int) -> dict[str, np.ndarray]:
        ex = self._cache.get(k)
        if ex is None:
            raw = self._stream[k]
            ex = {key: np.asarray(raw[key]) for key in ("tokens", "loss_mask", "vision_mask")}
            self._cache[k] = ex
        return ex

    def __next__(self) -> dict[str, np.ndarray]:
        packer = self._packer
        while not packer.ready:
            if packer.pending:
                packer.place_pending()
            elif self._next < self._len:
                k = self._next
                self._next += 1
                n = len(self._fetch(k)["tokens"])
                if n < self._cfg.min_example_len:
                    packer.dropped_examples += 1
                    self._cache.pop(k, None)
                    self._dropped(k, n, "short")
                else:
                    packer.add_example(k, n - 1)
                    if packer.pending:
                        self._run_start = self._next
                    else:  # dropped as too long (long_examples="drop")
                        self._dropped(k, n, "long")
            elif packer.open:
                packer.flush()
            else:
                raise StopIteration
        row = packer.ready.popleft()
        out = materialize_row(
            row,
            {k: self._fetch(k) for k, _, _ in row},
            self._seq_len,
            self._cfg.pad_id,
            position_stretch=self._cfg.position_stretch,
            seed=int(self._fingerprint["seed"]),
        )
        live = packer.referenced()
        for k in [k for k in self._cache if k not in live]:
            del self._cache[k]
        return out

    def _dropped(self, k: int, n: int, why: str) -> None:
        """Notes a dropped example; raises once a whole aligned pass over the shard was dropped
        (cheap: a counter, checked at the end of each pass)."""
        lens = self._dropped_lens
        lens[why] = max(lens.get(why, n), n) if why == "short" else min(lens.get(why, n), n)
        epoch = self._info.epoch_len
        if epoch <= 0 or (k + 1) % epoch or self._run_start > k + 1 - epoch:
            return
        cfg, reasons = self._cfg, []
        if "short" in lens:
            reasons.append(
                f"shorter than data.min_example_len {cfg.min_example_len} (the longest has "
                f"{lens['short']} tokens)"
            )
        if "long" in lens:
            reasons.append(
                f"longer than seq_len {self._seq_len} allows with data.long_examples='drop' (the "
                f"shortest has {lens['long']} tokens)"
            )
        index, count = self._info.shard
        where = f" of data shard {index} of {count}" if count > 1 else ""
        raise LwmError(
            f"{self._info.name}: every one of the {epoch} examples{where} is "
            f"{' or '.join(reasons)}: nothing to read, it would loop forever"
        )

    def get_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            **self._fingerprint,
            "seq_len": self._seq_len,
            "next": self._next,
            "packer": self._packer.get_state(),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise LwmError(f"data iterator state has version {state.get('version')}, expected 1")
        for key, want in self._fingerprint.items():
            got = state.get(key)
            if isinstance(want, list | tuple):
                got = list(got) if got is not None else None
                want = list(want)
            if got != want:
                raise LwmError(
                    f"data iterator state is for {key}={got!r} but this run has {key}={want!r}"
                )
        self._next = int(state["next"])
        self._run_start = self._next  # a drop run before the restore is not known: start anew
        self._packer.set_state(state["packer"])
        self._cache.clear()
