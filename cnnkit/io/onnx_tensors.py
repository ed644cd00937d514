"""ONNX tensors (``TensorProto``) as read-only NumPy arrays, checked before anything is allocated.

A tensor's bytes live in one of three places: ``raw_data`` (little-endian bytes), a typed field
(``float_data``, ``int32_data``, ``int64_data``, ``double_data``; float16, int8, int16, uint8 and
bool are stored widened in ``int32_data``), or an external file named by ``external_data``
(``location``, ``offset``, ``length``). Each is checked against the shape first: the dims are
non-negative, their product (a Python integer, so it cannot overflow) times the item size equals
the bytes present, and only then is an array made.

External files are read only from the model's own folder: a location is relative, has no ``..``,
resolves (symbolic links followed) inside the folder, is a regular file (never a directory, a
FIFO or a device), and its offset and length lie within it. Only the tensor's own byte range is
read. Everything a model reads, the model file and its external data together, counts against
one byte budget (``read_onnx_graph(max_bytes=...)``).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from cnnkit.errors import OnnxError

__all__ = ["DTYPES", "MAX_RANK", "TensorSource", "dtype_name", "tensor_array"]

# ONNX's TensorProto.DataType codes cnnkit can compute with, and the typed field each is kept in
# when a file does not use raw_data (float16 as its 16-bit pattern, the small integers widened).
DTYPES = {1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8), 5: np.dtype(np.int16),
          6: np.dtype(np.int32), 7: np.dtype(np.int64), 9: np.dtype(np.bool_), 10: np.dtype(np.float16),
          11: np.dtype(np.float64)}
_TYPED_FIELD = {1: "float_data", 2: "int32_data", 3: "int32_data", 5: "int32_data", 6: "int32_data",
                7: "int64_data", 9: "int32_data", 10: "int32_data", 11: "double_data"}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_FIELD_DTYPE = {"float_data": np.float32, "int32_data": np.int32, "int64_data": np.int64,
                "double_data": np.float64}
# The range each type's values must fall in when widened into int32_data (float16: its bits).
_INT32_RANGE = {2: (0, 255), 3: (-128, 127), 5: (-(2**15), 2**15 - 1), 9: (0, 1), 10: (0, 2**16 - 1)}
_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
          7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64",
          14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16"}
MAX_RANK = 32
_EXTERNAL = 1          # TensorProto.DataLocation.EXTERNAL
_READ_CHUNK = 64 << 20  # one read() call; Linux returns at most about 2 GiB per call anyway


def dtype_name(code: int) -> str:
    """The name ONNX gives a ``TensorProto.DataType`` code (``FLOAT``), or the number if unknown."""
    return _NAMES.get(code, f"data type {code}")


@dataclass
class TensorSource:
    """Where a model's tensors come from: the model file (for messages), the folder its external
    data must stay in, and the bytes the reader may still read (spent as external data is read)."""

    path: Path
    folder: Path
    budget: int

    def error(self, what: str, message: str) -> OnnxError:
        return OnnxError(f"{self.path}: {what}: {message}")

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.budget:
            raise self.error(what, f"reading its {nbytes} bytes would pass the limit of bytes to read "
                                   f"(max_bytes; {self.budget} left); raise max_bytes if the model is "
                                   "really that large")
        self.budget -= nbytes


def tensor_array(tensor: Any, what: str, source: TensorSource) -> np.ndarray:
    """``tensor`` (a ``TensorProto``) as a read-only array of its dtype and dims.

    ``what`` names it in errors (``initializer 'conv1.weight'``). Raises ``OnnxError`` for an
    unsupported type, a segmented tensor, negative dims, data whose length is not the dims'
    product, values out of their type's range, or external data that is missing, outside the
    model's folder or out of range.
    """
    code = tensor.data_type
    if code not in DTYPES:
        raise source.error(what, f"data type {dtype_name(code)} is not one cnnkit computes with "
                                 "(float32/64/16, int8/16/32/64, uint8, bool); convert the model's "
                                 "tensor to float32 before exporting")
    if tensor.HasField("segment"):
        raise source.error(what, "is a segmented tensor, which cnnkit does not read; re-save the model "
                                 "with onnx.save_model")
    dtype, shape = DTYPES[code], _dims(tensor, what, source)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    stored = [name for name in _TYPED_FIELDS if len(getattr(tensor, name))]
    if tensor.data_location == _EXTERNAL or len(tensor.external_data):
        if tensor.data_location != _EXTERNAL or tensor.HasField("raw_data") or stored:
            raise source.error(what, "mixes external data with data in the file (data_location, "
                                     "external_data, raw_data and typed fields disagree); re-save it")
        raw = read_external(tensor, what, count * dtype.itemsize, source)
        return _from_bytes(raw, dtype, shape, what, source)
    if tensor.HasField("raw_data"):
        if stored:
            raise source.error(what, f"has both raw_data and {stored[0]}; keep one")
        raw = tensor.raw_data
        if len(raw) != count * dtype.itemsize:
            raise source.error(what, f"raw_data holds {len(raw)} bytes but dims {list(shape)} of "
                                     f"{dtype_name(code)} need {count} x {dtype.itemsize} = "
                                     f"{count * dtype.itemsize}; the file is damaged")
        return _from_bytes(raw, dtype, shape, what, source)
    return _from_typed(tensor, stored, dtype, shape, count, what, source)


def _dims(tensor: Any, what: str, source: TensorSource) -> tuple[int, ...]:
    if len(tensor.dims) > MAX_RANK:
        raise source.error(what, f"has {len(tensor.dims)} dims, more than the {MAX_RANK} cnnkit reads")
    shape = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in shape):
        raise source.error(what, f"dims {list(shape)} has a negative size; the file is damaged")
    return shape


def _from_bytes(raw, dtype: np.dtype, shape: tuple[int, ...], what: str, source: TensorSource) -> np.ndarray:
    """Little-endian bytes (length already checked) as a read-only native array."""
    if dtype == np.bool_ and len(raw) and np.frombuffer(raw, np.uint8).max() > 1:
        raise source.error(what, "a BOOL value is neither 0 nor 1; the file is damaged")
    if sys.byteorder == "little":
        array = np.frombuffer(raw, dtype).reshape(shape)
    else:  # ONNX stores little-endian bytes
        array = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    array.setflags(write=False)
    return array


def _from_typed(tensor: Any, stored: list[str], dtype: np.dtype, shape: tuple[int, ...], count: int,
                what: str, source: TensorSource) -> np.ndarray:
    """A tensor kept in its typed field: the field's length checked against the dims, then read."""
    field = _TYPED_FIELD[tensor.data_type]
    if any(name != field for name in stored):
        raise source.error(what, f"a {dtype_name(tensor.data_type)} tensor keeps its values in {field}, "
                                 f"but the file fills {', '.join(stored)}; the file is damaged")
    values = getattr(tensor, field)
    if len(values) != count:
        raise source.error(what, f"{field} holds {len(values)} values but dims {list(shape)} need "
                                 f"{count}; the file is damaged")
    array = np.fromiter(values, _FIELD_DTYPE[field], count=count)
    if tensor.data_type in _INT32_RANGE:
        low, high = _INT32_RANGE[tensor.data_type]
        if count and (array.min() < low or array.max() > high):
            raise source.error(what, f"a value of int32_data lies outside [{low}, {high}], the range of "
                                     f"{dtype_name(tensor.data_type)}; the file is damaged")
        array = array.astype(np.uint16).view(np.float16) if dtype == np.float16 else array.astype(dtype)
    array = array.reshape(shape)
    array.setflags(write=False)
    return array


# ------------------------------------------------------------------------ external data


def read_external(tensor: Any, what: str, nbytes: int, source: TensorSource) -> np.ndarray:
    """The ``nbytes`` bytes of an external tensor, as uint8, from a checked file in the model's folder."""
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if not isinstance(entry.key, str) or not isinstance(entry.value, str):  # bytes: not UTF-8
            raise source.error(what, f"an external_data entry ({entry.key!r}) is not UTF-8 text; the file "
                                     "is damaged")
        if entry.key in entries:
            raise source.error(what, f"external_data names {entry.key!r} twice; the file is damaged")
        entries[entry.key] = entry.value
    if not entries.get("location"):
        raise source.error(what, "is stored externally but external_data has no location; the file "
                                 "is damaged")
    offset = _entry_int(entries, "offset", what, source)
    length = _entry_int(entries, "length", what, source)
    file = external_path(entries["location"], what, source)
    fd = _open_regular(file, what, source)
    try:
        size = os.fstat(fd).st_size
        offset = offset or 0
        if offset > size:
            raise source.error(what, f"external data offset {offset} lies beyond the end of {file} "
                                     f"({size} bytes); the file is damaged or truncated")
        length = size - offset if length is None else length
        if offset + length > size:
            raise source.error(what, f"external data offset {offset} + length {length} runs past the end "
                                     f"of {file} ({size} bytes); the file is damaged or truncated")
        if length != nbytes:
            raise source.error(what, f"external data length {length} is not the {nbytes} bytes its dims "
                                     "and data type need; the file is damaged")
        source.spend(nbytes, what)
        return _read_range(fd, offset, nbytes, file, what, source)
    finally:
        os.close(fd)


def _entry_int(entries: dict[str, str], key: str, what: str, source: TensorSource) -> int | None:
    if key not in entries:
        return None
    text = entries[key]
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise source.error(what, f"external data {key}={text[:40]!r} is not a non-negative integer; "
                                 "the file is damaged")
    return int(text)


def external_path(location: str, what: str, source: TensorSource) -> Path:
    """The file ``location`` names, resolved, after checking it stays inside the model's folder."""
    shown = repr(location[:200])
    if "\x00" in location or PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive \
            or location.startswith("\\"):
        raise source.error(what, f"external data location {shown} is absolute; cnnkit reads external "
                                 f"data only from the model's folder {source.folder}: make it relative")
    if ".." in location.replace("\\", "/").split("/"):
        raise source.error(what, f"external data location {shown} leaves the model's folder through "
                                 f"'..'; keep the data file in {source.folder}")
    try:
        resolved = (source.folder / location).resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # missing, or a loop of symbolic links
        raise source.error(what, f"external data file {shown} cannot be opened in {source.folder} "
                                 f"({exc.__class__.__name__}: {exc}); put it beside the model") from None
    if resolved == source.folder or not resolved.is_relative_to(source.folder):
        raise source.error(what, f"external data location {shown} resolves to {resolved}, outside the "
                                 f"model's folder {source.folder} (a symbolic link?); copy the data "
                                 "file into the folder")
    return resolved


def _open_regular(file: Path, what: str, source: TensorSource) -> int:
    """Open a regular file for reading without blocking on a FIFO, and without following a link
    put in place after the path was resolved; where the system shows what an open descriptor
    is (Linux's /proc/self/fd), check again that it lies in the model's folder, so a folder
    swapped for a link between the check and the open is caught too."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            raise source.error(what, f"external data file {file} is not a regular file (a directory, FIFO "
                                     "or device); point location at the data file")
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise source.error(what, f"external data file {file} cannot be opened ({exc}); check it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise source.error(what, f"external data file {file} is not a regular file; it changed while "
                                     "it was opened")
        opened = _opened_path(fd)
        if opened is not None and not opened.is_relative_to(source.folder):
            raise source.error(what, f"external data file {file} opened as {opened}, outside the model's "
                                     f"folder {source.folder}; it changed while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _opened_path(fd: int) -> Path | None:
    """The path the system gives an open descriptor, or None where it does not say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _read_range(fd: int, offset: int, nbytes: int, file: Path, what: str, source: TensorSource) -> np.ndarray:
    buffer = np.empty(nbytes, np.uint8)
    view, done = memoryview(buffer), 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:done + _READ_CHUNK]], offset + done)
        if got <= 0:
            raise source.error(what, f"external data file {file} ended after {offset + done} bytes while "
                                     f"reading {nbytes} from offset {offset}; it changed or is truncated")
        done += got
    return buffer
