"""A restricted unpickler for parameter trees: numpy arrays, dtypes and plain containers only.

LWM ships its VQGAN weights as `pickle.dump(params)` of a (possibly frozen) dict of numpy or jax
arrays. An ordinary `pickle.load` would run whatever callable the file names, so this unpickler
resolves a global only from a fixed table of safe rebuilders and refuses every other global with
a one-line `LwmError` naming it. Nothing is imported or called on the file's behalf: jax arrays
(`jax._src.array._reconstruct_array`) and flax `FrozenDict`s are rebuilt as numpy arrays and
dicts by local functions, without importing jax or flax; each rebuilder checks its arguments.
"""

from __future__ import annotations

import io
import pathlib
import pickle
from typing import Any

import ml_dtypes
import numpy as np

from lwm.errors import LwmError


def _check_dtype(dt: np.dtype, where: str) -> np.dtype:
    if dt.hasobject or dt.fields is not None:
        raise LwmError(f"{where}: refusing an array of dtype {dt} (only plain numeric arrays)")
    return dt


def _ndarray_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    # numpy's pickled ndarray: _reconstruct(ndarray, (0,), b'b') then BUILD with its state.
    if cls is not np.ndarray:
        raise LwmError(f"pickle: numpy _reconstruct of {cls!r}, only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # numpy's pickle protocol 5 form.
    dtype = _check_dtype(np.dtype(dtype), "pickle")
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order=order if order in ("C", "F") else "C").copy()


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(obj, str) and obj not in _ML_DTYPES:
        raise LwmError(f"pickle: numpy.dtype({obj!r}) is not a plain dtype name")
    return _check_dtype(np.dtype(obj, align=bool(align), copy=bool(copy)), "pickle")


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise LwmError("pickle: numpy scalar with unexpected arguments")
    return np.frombuffer(data, dtype=_check_dtype(dtype, "pickle"), count=1)[0]


def _jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any) -> np.ndarray:
    # jax.Array.__reduce__ -> (_reconstruct_array, (numpy's rebuilder, its args, its state, aval)).
    if fun not in (_ndarray_reconstruct, _frombuffer) or not isinstance(args, tuple):
        raise LwmError("pickle: jax array with an unexpected rebuilder")
    arr = fun(*args)
    if arr_state is not None:
        arr.__setstate__(arr_state)
    _check_dtype(arr.dtype, "pickle")
    return arr


def _frozen_dict(*args: Any, **kwargs: Any) -> dict:
    if len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise LwmError("pickle: FrozenDict with unexpected arguments")
    out = dict(args[0]) if args else {}
    out.update(kwargs)
    return out


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 stores bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding != "latin1":
        raise LwmError("pickle: _codecs.encode only rebuilds latin1 bytes")
    return text.encode("latin1")


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_SAFE: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _ndarray_reconstruct for m in _NUMPY_CORE},
    **{(m, "scalar"): _scalar for m in _NUMPY_CORE},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("flax.core.frozen_dict", "FrozenDict"): _frozen_dict,
    ("collections", "OrderedDict"): _frozen_dict,
    ("builtins", "dict"): _frozen_dict,
}
# Dtype classes numpy >= 1.25 pickles by name (numpy.dtypes.Float32DType, ...), and ml_dtypes'
# scalar types used by bfloat16 arrays.
_ML_DTYPES = tuple(
    getattr(ml_dtypes, n)
    for n in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4")
    if hasattr(ml_dtypes, n)
)
for _t in _ML_DTYPES:
    _SAFE[("ml_dtypes", _t.__name__)] = _t
for _t in (
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
):
    _SAFE[("numpy.dtypes", type(np.dtype(_t)).__name__)] = type(np.dtype(_t))


class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` only hands out the rebuilders in `_SAFE`."""

    def __init__(self, file, *, where: str = "pickle"):
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        fn = _SAFE.get((module, name))
        if fn is None:
            raise LwmError(
                f"{self._where}: refusing pickled global {module}.{name} (only numpy arrays, "
                f"dtypes and dicts are loaded; nothing in the file is run)"
            )
        return fn

    def persistent_load(self, pid: Any) -> Any:
        raise LwmError(f"{self._where}: refusing a pickle persistent id")


def _plain(tree: Any, where: str) -> Any:
    """Checks the result is dicts/lists/tuples of arrays and scalars only."""
    if isinstance(tree, dict):
        return {k: _plain(v, where) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_plain(v, where) for v in tree)
    if isinstance(tree, (np.ndarray, np.generic, int, float, str, bool, bytes)) or tree is None:
        return tree
    raise LwmError(f"{where}: unexpected object of type {type(tree).__name__} in the tree")


def loads(data: bytes, *, where: str = "pickle") -> Any:
    """Unpickles `data` with `SafeUnpickler`; any pickle error is a one-line `LwmError`."""
    try:
        tree = SafeUnpickler(io.BytesIO(data), where=where).load()
    except LwmError:
        raise
    except Exception as e:  # malformed stream, wrong state for BUILD, ...
        raise LwmError(
            f"{where}: not a readable pickle of arrays: {type(e).__name__}: {e}"
        ) from None
    return _plain(tree, where)


def load(path: str | pathlib.Path) -> Any:
    """Reads a pickled parameter tree (dicts of numpy arrays) from `path`, safely."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise LwmError(f"{path}: no such file")
    return loads(path.read_bytes(), where=str(path))
