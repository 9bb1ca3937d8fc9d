"""Parquet input of `lwm data build` (the format HF datasets publish): one example per row.

The field syntax is the jsonl one: a text field reads a string column (or a list-of-ints column of
token ids), a vision field a list-of-ints or list-of-lists-of-ints column. Only the columns the
fields name are read, a bounded batch of one row group at a time, never the whole file. A missing
column or a column of another type is a one-line LwmError naming the file, row group and row; a
null value is a bad row (skipped and counted with `--skip-bad`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from lwm.data.fields import is_vision_key
from lwm.errors import LwmError

BATCH_ROWS = 1024
"""Rows converted to Python at once (a row group of a large file can hold millions)."""


def _is_int(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t)


def _list_value(t):
    """The element type of a list-like arrow type, or None."""
    import pyarrow as pa

    list_kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(f(t) for f in list_kinds) or getattr(pa.types, "is_list_view", lambda _: False)(t):
        return t.value_type
    return None


def _is_string(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or getattr(pa.types, "is_string_view", lambda _: False)(t)
    )


def column_problem(key: str, arrow_type) -> str | None:
    """Why a column of `arrow_type` cannot feed field `key`, or None when it can."""
    inner = _list_value(arrow_type)
    inner2 = _list_value(inner) if inner is not None else None
    if is_vision_key(key):
        if inner is not None and (_is_int(inner) or (inner2 is not None and _is_int(inner2))):
            return None
        needs = "a list of ints (VQ codes) or a list of lists of ints (frames)"
    else:
        if _is_string(arrow_type) or (inner is not None and _is_int(inner)):
            return None
        needs = "a string or a list of token ids"
    return f"column {key!r} is {arrow_type}, field {key!r} needs {needs}"


def iter_parquet_records(
    path: pathlib.Path, file_index: int, keys: Sequence[str]
) -> Iterator[tuple[str, str, dict[str, Any] | ValueError]]:
    """(key, where, record) per row; `record` is a ValueError for a bad row (a null value), for
    the caller to raise or skip. Keys `"{file_index}:{row + 1}"` are those of the same records
    given as jsonl lines (so both build the same dataset, in the same order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LwmError(f"{path}: not a Parquet file ({why})") from None
    schema = pf.schema_arrow
    for key in keys:
        if key not in schema.names:
            cols = ", ".join(schema.names[:8]) + (", ..." if len(schema.names) > 8 else "")
            raise LwmError(f"{path}: row group 0, row 0: no column {key!r} (columns: {cols})")
        problem = column_problem(key, schema.field(key).type)
        if problem:
            raise LwmError(f"{path}: row group 0, row 0: {problem}")
    columns = list(dict.fromkeys(keys))
    row0 = 0  # index in the file of the row group's first row
    for g in range(pf.num_row_groups):
        r = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=columns):
            for rec in batch.to_pylist():
                where = f"{path}: row group {g}, row {r}"
                nulls = [k for k in columns if rec[k] is None]
                item = ValueError(f"column {nulls[0]!r} is null") if nulls else rec
                yield f"{file_index}:{row0 + r + 1}", where, item
                r += 1
        row0 += pf.metadata.row_group(g).num_rows
