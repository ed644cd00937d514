"""Read pickled data files (CIFAR's python batches) without running code from them.

A pickle names the callables that rebuild its objects and the unpickler calls them, so
loading an untrusted pickle with ``pickle.load`` can run anything. Here every name a
file mentions is refused, except the handful that NumPy arrays are pickled with, and
even those are never looked up: each maps to a stand-in written below that only
accepts plain numbers, strings and bytes, and builds the array with ``np.frombuffer``
from a whitelisted numeric dtype. Everything else in the file must be builtin data
(dict, list, tuple, str, bytes, int, float, bool, None).
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np

from cnnkit.errors import DataError


class _Refused(Exception):
    """A construct the file may not use; turned into DataError with the file's name."""


class _DtypeStub:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` followed by ``__setstate__``."""

    spec: str | None = None
    order: str = "|"

    def __init__(self, spec=None, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str) or not re.fullmatch(r"[biufc]\d{1,2}", spec):
            raise _Refused(f"dtype {spec!r} (only plain numeric dtypes are allowed)")
        self.spec = spec

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 5:
            raise _Refused(f"dtype state {state!r}")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise _Refused("a structured or sub-array dtype")
        self.order = order

    def resolve(self) -> np.dtype:
        if self.spec is None:
            raise _Refused("a dtype built without a type code")
        order = "=" if self.order == "|" else self.order
        return np.dtype(order + self.spec)


def _as_bytes(raw) -> bytes:
    if isinstance(raw, str):  # Python 2 pickles loaded with encoding="latin1"
        return raw.encode("latin1")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    raise _Refused(f"array data of type {type(raw).__name__} (object arrays are not allowed)")


def _shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _Refused(f"array shape {shape!r}")
    return shape


def _dtype(dtype) -> np.dtype:
    if not isinstance(dtype, _DtypeStub):
        raise _Refused(f"array dtype {dtype!r}")
    return dtype.resolve()


def _array(raw, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    data = _as_bytes(raw)
    if math.prod(shape) * dtype.itemsize != len(data):
        raise _Refused(f"array of shape {shape} and dtype {dtype} with {len(data)} data bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()


class _ArrayStub:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, ...)`` + ``__setstate__``."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version number
        if not isinstance(state, tuple) or len(state) != 4:
            raise _Refused("array state of an unknown layout")
        shape, dtype, fortran, raw = state
        self.array = _array(raw, _dtype(dtype), _shape(shape), "F" if fortran else "C")


class _Global:
    """What a file gets for a name it mentions: a callable it cannot modify.

    Handing out plain functions or classes would let a BUILD opcode set attributes on
    them (and so change them for later loads); this wrapper refuses any state.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise _Refused("setting state on a global")


def _ndarray_called(*args):
    raise _Refused("calling numpy.ndarray")


_NDARRAY = _Global(_ndarray_called)


def _reconstruct(cls, shape, dtype_code):
    if cls is not _NDARRAY:
        raise _Refused("an ndarray subclass")
    return _ArrayStub()


def _frombuffer(buf, dtype, shape, order):
    return _array(buf, _dtype(dtype), _shape(shape), "F" if order == "F" else "C")


def _scalar(dtype, raw):
    return _array(raw, _dtype(dtype), (), "C")[()].item()


def _codecs_encode(text, encoding="utf-8"):
    # Python 3 writes bytes at protocol <= 2 as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_STAND_INS = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _Global(_DtypeStub),
              ("_codecs", "encode"): _Global(_codecs_encode)}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _STAND_INS[(_mod, "_reconstruct")] = _Global(_reconstruct)
    _STAND_INS[(_mod, "scalar")] = _Global(_scalar)
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _STAND_INS[(_mod, "_frombuffer")] = _Global(_frombuffer)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _STAND_INS[(module, name)]
        except KeyError:
            raise _Refused(f"the global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("a persistent id")


def _resolve(obj, seen: dict[int, object]):
    """Replace array stand-ins by their arrays inside dicts, lists and tuples."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise _Refused("an array without data")
        return obj.array
    if isinstance(obj, _DtypeStub):
        return obj.resolve()
    if not isinstance(obj, dict | list | tuple) or id(obj) in seen:
        return seen.get(id(obj), obj)
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for k in obj:
            obj[k] = _resolve(obj[k], seen)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        obj[:] = [_resolve(v, seen) for v in obj]
        return obj
    out = tuple(_resolve(v, seen) for v in obj)
    seen[id(obj)] = out
    return out


def _check_opcodes(data: bytes) -> None:
    """Walk the opcodes once before unpickling, building nothing.

    The C unpickler grows its memo table to the largest index a PUT names (one PUT of
    index 2**27 fills a gigabyte), and sizes a bytes object by its declared length before
    reading it; here a length past the end of the data, or a memo index no earlier
    opcode could have used, is refused first (ValueError, a damaged file).
    """
    for count, (opcode, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data))):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= count:
            raise ValueError(f"memo index {arg} at opcode {count}; indices count up from 0")


def load_data_pickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only builtin data and NumPy numeric arrays."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        _check_opcodes(data)
        obj = _Unpickler(io.BytesIO(data), encoding="latin1").load()
        return _resolve(obj, {})
    except _Refused as e:
        raise DataError(f"{path}: refusing to load {e}; only plain data and numeric NumPy "
                        "arrays are read from pickle files, nothing that could run code.") from None
    except RecursionError:
        raise DataError(f"{path}: the pickled data is nested too deeply to load.") from None
    except Exception as e:  # a damaged pickle fails in many ways; all mean the same here
        raise DataError(f"{path}: not a readable pickle file ({type(e).__name__}: {e}).") from e
