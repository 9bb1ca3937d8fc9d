"""Reader for the streaming msgpack checkpoints of LWM's trainer (tux/EasyLM StreamingCheckpointer).

The file is a plain concatenation of msgpack objects, one per tensor: a 2-element array
`[key_path, value]` where `key_path` is an array of strings (the flattened flax state-dict path,
e.g. `["transformer", "h", "scan_decoder", "attention", "wq", "kernel"]`) and `value` is a bin
holding flax's msgpack serialization of that one leaf:
  - an ndarray is msgpack ext type 1 whose data is the msgpack array
    `[shape, dtype_name, row-major bytes]`; ext 3 is a numpy scalar in the same encoding; ext 2 a
    native complex `[real, imag]`;
  - an array over 1 GiB is a map `{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...},
    "chunks": {"0": ext-ndarray, ...}}` of flat pieces.
Only this is decoded: no pickle, no other ext types, no object dtypes. Tensors are read one at a
time (the unpacker holds one object), so a reader keeps at most one tensor besides its output.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import numpy as np

from lwm.errors import LwmError

_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"
_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint32": np.uint32,
    "bool": np.bool_,
}
READ_SIZE = 64 * 2**20


def _dtype(name: bytes | str):
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _DTYPES:
        raise ValueError(f"unsupported array dtype {name!r}")
    return np.dtype(_DTYPES[name])


def _ndarray(data: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    shape = tuple(int(d) for d in shape)
    return np.frombuffer(buffer, dtype=_dtype(dtype_name)).reshape(shape)


def _ext_hook(code: int, data: bytes):
    import msgpack

    if code == _EXT_NDARRAY:
        return _ndarray(data)
    if code == _EXT_NPSCALAR:
        return _ndarray(data)[()]
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise ValueError(f"unknown msgpack ext type {code}")


def _ext_ndarray_view(value: bytes) -> np.ndarray | None:
    """The array of a leaf that is a single ext-1 ndarray, as a view of `value` (no copy); None
    for any other leaf (chunked arrays, scalars), which take the general path."""
    import msgpack

    mv = memoryview(value)
    head = {0xC7: 1, 0xC8: 2, 0xC9: 4}.get(mv[0]) if len(mv) > 6 else None
    if head is None:
        return None
    size = int.from_bytes(mv[1 : 1 + head], "big")
    if mv[1 + head] != _EXT_NDARRAY:
        return None
    data = mv[2 + head : 2 + head + size]
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(bytes(data[:512]))  # the shape and dtype name: a few dozen bytes
    if unpacker.read_array_header() != 3:
        return None
    shape, dtype_name = unpacker.unpack(), unpacker.unpack()
    pos = unpacker.tell()
    blen = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(data[pos])
    if blen is None:
        return None
    n = int.from_bytes(data[pos + 1 : pos + 1 + blen], "big")
    buffer = data[pos + 1 + blen : pos + 1 + blen + n]
    if len(buffer) != n:
        raise ValueError("array bytes cut short")
    return np.frombuffer(buffer, dtype=_dtype(dtype_name)).reshape(tuple(int(d) for d in shape))


def decode_leaf(value: bytes) -> np.ndarray:
    """One flax-serialized leaf (an array, a scalar, or a chunked array) as a numpy array."""
    import msgpack

    fast = _ext_ndarray_view(value)
    if fast is not None:
        return fast
    obj = msgpack.unpackb(value, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    if isinstance(obj, dict) and obj.get(_CHUNKED) is True:
        shape = tuple(int(obj["shape"][str(i)]) for i in range(len(obj["shape"])))
        chunks = [obj["chunks"][str(i)] for i in range(len(obj["chunks"]))]
        flat = np.concatenate([np.asarray(c).reshape(-1) for c in chunks])
        return flat.reshape(shape)
    if isinstance(obj, np.ndarray | np.generic | int | float | complex | bool):
        return np.asarray(obj)
    raise ValueError(f"a {type(obj).__name__} where an array was expected")


def iter_streaming_checkpoint(
    path: str | os.PathLike, *, want=None
) -> Iterator[tuple[tuple[str, ...], np.ndarray | None]]:
    """Yields `(key_path, array)` for each record of a streaming checkpoint, in file order.

    `want(key_path) -> bool` filters: a record it rejects is yielded with `None` and its value is
    never decoded (e.g. optimizer moments of a full train state). Malformed input raises LwmError.
    """
    import msgpack

    path = pathlib.Path(path)
    if not path.is_file():
        raise LwmError(f"LWM checkpoint file not found: {path}")
    size = path.stat().st_size
    where = f"{path} is not an LWM streaming msgpack checkpoint"
    n = 0
    with open(path, "rb") as f:
        # max_buffer_size=0 lets one object reach msgpack's 4 GiB limit (a 7B scanned bf16 MLP
        # kernel is ~2.9 GB); the unpacker never holds more than the object being read.
        unpacker = msgpack.Unpacker(
            f, read_size=READ_SIZE, max_buffer_size=0, raw=False, use_list=True
        )
        while True:
            try:
                record = next(unpacker)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - any msgpack failure is a malformed file
                raise LwmError(f"{where} (record {n}: {type(e).__name__}: {e})") from None
            if not (
                isinstance(record, list)
                and len(record) == 2
                and isinstance(record[0], list)
                and all(isinstance(k, str) for k in record[0])
                and isinstance(record[1], bytes)
            ):
                raise LwmError(f"{where} (record {n} is not a [key path, bytes] pair)")
            key = tuple(record[0])
            if want is not None and not want(key):
                yield key, None
            else:
                try:
                    array = decode_leaf(record[1])
                except Exception as e:  # noqa: BLE001
                    raise LwmError(f"{path}: tensor {'/'.join(key)}: cannot decode ({e})") from None
                record = None  # drop the encoded bytes before the caller converts the array
                yield key, array
            n += 1
        if unpacker.tell() != size:
            raise LwmError(
                f"{path} is truncated or not an LWM streaming msgpack checkpoint: read "
                f"{unpacker.tell()} of {size} bytes ({n} complete records)"
            )
    if n == 0:
        raise LwmError(f"{where} (no records)")
