"""Masked sequence packing: examples placed into fixed-length rows, each keeping its own segment.

An example of L tokens gives L-1 (input, target) pairs; rows are filled with pairs, so no target
ever crosses from one example into the next and nothing is lost where a long example is split.
The packer only moves *pieces* — (stream index, start, length) — so its whole state is a few
small integer lists (JSON), and the rows are materialised from the examples on demand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Piece = tuple[int, int, int]
"""(index of the example in the process's stream, first pair, number of pairs)."""

BATCH_KEYS = (
    "tokens",
    "targets",
    "loss_mask",
    "vision_mask",
    "target_vision_mask",
    "segment_ids",
    "positions",
)
BATCH_DTYPES = {
    "tokens": np.int32,
    "targets": np.int32,
    "loss_mask": np.float32,
    "vision_mask": np.bool_,
    "target_vision_mask": np.bool_,
    "segment_ids": np.int32,
    "positions": np.int32,
}


class Packer:
    """Places pieces into rows of `seq_len` pairs (first_fit, greedy or pad); rows come out of
    `ready` in a deterministic order."""

    def __init__(
        self, seq_len: int, mode: str, *, open_rows: int = 8, long_examples: str = "split"
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.mode = mode
        self.max_open = 1 if mode == "greedy" else open_rows
        self.long_examples = long_examples
        self.pending: deque[Piece] = deque()
        self.open: list[list[Piece]] = []
        self.ready: deque[list[Piece]] = deque()
        self.dropped_examples = 0

    def add_example(self, k: int, num_pairs: int) -> None:
        """Queues example `k` (of `num_pairs` pairs) as one piece, or several if it is too long."""
        S = self.seq_len
        if num_pairs <= 0:
            return
        if num_pairs <= S:
            self.pending.append((k, 0, num_pairs))
        elif self.long_examples == "split":
            self.pending.extend((k, s, min(S, num_pairs - s)) for s in range(0, num_pairs, S))
        elif self.long_examples == "truncate":
            self.pending.append((k, 0, S))
        else:
            self.dropped_examples += 1

    def place_pending(self) -> None:
        while self.pending:
            self._place(self.pending.popleft())

    def _place(self, piece: Piece) -> None:
        n = piece[2]
        if self.mode == "pad":
            self.ready.append([piece])
            return
        for i, row in enumerate(self.open):
            if _used(row) + n <= self.seq_len:
                row.append(piece)
                if _used(row) == self.seq_len:
                    self.ready.append(self.open.pop(i))
                return
        if len(self.open) >= self.max_open:
            # Greedy: the single open row; first-fit: the fullest (oldest on ties).
            fullest = max(range(len(self.open)), key=lambda i: (_used(self.open[i]), -i))
            self.ready.append(self.open.pop(fullest))
        if n == self.seq_len:
            self.ready.append([piece])
        else:
            self.open.append([piece])

    def flush(self) -> None:
        """End of data: every open row becomes ready (oldest first)."""
        self.place_pending()
        self.ready.extend(self.open)
        self.open = []

    def referenced(self) -> set[int]:
        """Stream indices whose data is still needed."""
        rows = [*self.ready, *self.open, list(self.pending)]
        return {p[0] for row in rows for p in row}

    def get_state(self) -> dict[str, Any]:
        return {
            "pending": [list(p) for p in self.pending],
            "open": [[list(p) for p in row] for row in self.open],
            "ready": [[list(p) for p in row] for row in self.ready],
            "dropped_examples": self.dropped_examples,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        def pieces(row):
            return [(int(a), int(b), int(c)) for a, b, c in row]

        self.pending = deque(pieces(state["pending"]))
        self.open = [pieces(r) for r in state["open"]]
        self.ready = deque(pieces(r) for r in state["ready"])
        self.dropped_examples = int(state.get("dropped_examples", 0))
        if any(p[2] > self.seq_len for row in [*self.open, *self.ready] for p in row):
            # Restored at a shorter seq_len (a new stage): re-place the rows' pieces.
            old = [p for row in [*self.ready, *self.open] for p in row] + list(self.pending)
            self.pending, self.open, self.ready = deque(), [], deque()
            for k, s, n in old:
                self.pending.extend(
                    (k, s + o, min(self.seq_len, n - o)) for o in range(0, n, self.seq_len)
                )


def _used(row: Sequence[Piece]) -> int:
    return sum(p[2] for p in row)


def materialize_row(
    row: Sequence[Piece],
    examples: Mapping[int, Mapping[str, np.ndarray]],
    seq_len: int,
    pad_id: int,
    *,
    position_stretch: float = 1.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Arrays of one packed row; `examples[k]` holds `tokens`, `loss_mask`, `vision_mask` [L].

    `position_stretch` > 1: each piece's positions get one gap (`stretched_positions`)."""
    out = {k: np.zeros(seq_len, BATCH_DTYPES[k]) for k in BATCH_KEYS}
    out["tokens"][:] = pad_id
    out["targets"][:] = pad_id
    pos = 0
    for seg, (k, s, n) in enumerate(row, start=1):
        ex = examples[k]
        tok, loss, vis = ex["tokens"], ex["loss_mask"], ex["vision_mask"]
        sl = slice(pos, pos + n)
        out["tokens"][sl] = tok[s : s + n]
        out["targets"][sl] = tok[s + 1 : s + n + 1]
        out["loss_mask"][sl] = loss[s + 1 : s + n + 1]
        out["vision_mask"][sl] = vis[s : s + n]
        out["target_vision_mask"][sl] = vis[s + 1 : s + n + 1]
        out["segment_ids"][sl] = seg
        if position_stretch > 1.0:
            out["positions"][sl] = stretched_positions(n, position_stretch * seq_len, (seed, k, s))
        else:
            out["positions"][sl] = np.arange(n, dtype=np.int32)
        pos += n
    return out


def stretched_positions(n: int, span: float, key: tuple[int, ...]) -> np.ndarray:
    """Positions 0..n-1 with one gap (PoSE): a cut uniform in [1, n) and a gap uniform in
    [0, span - n], so the last position stays below `span`. Seeded by `key` (deterministic, so a
    resumed run rebuilds the same rows). Relative distances across the cut grow by the gap;
    distances within each side are unchanged."""
    pos = np.arange(n, dtype=np.int64)
    room = int(span) - n
    if n > 1 and room > 0:
        rng = np.random.default_rng([int(x) & 0xFFFFFFFF for x in key])
        cut = int(rng.integers(1, n))
        pos[cut:] += int(rng.integers(0, room + 1))
    return pos.astype(np.int32)
