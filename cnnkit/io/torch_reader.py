"""Read PyTorch ``.pth`` / ``.pt`` state dicts into NumPy arrays, without torch and without
running code from the file.

Two on-disk formats exist:

* **zip** (``torch.save`` since 1.6): an uncompressed zip whose single top folder holds
  ``data.pkl`` (the pickled object), ``byteorder`` (``little``/``big``) and ``data/<key>``,
  the raw bytes of each storage.
* **legacy** (``_use_new_zipfile_serialization=False``, and every file from before 1.6,
  such as torchvision's original VGG weights): consecutive pickles of a magic number, a
  protocol version, a system-info dict, the object, and the sorted list of storage keys,
  followed by each storage as an 8-byte element count and its raw bytes.

The pickle is read by :class:`~cnnkit.io._torch_pickle.RestrictedUnpickler`, which turns
tensors into descriptions; the bytes are then read storage by storage straight into NumPy
buffers, so peak memory stays close to the size of the returned arrays.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cnnkit.errors import WeightsError
from cnnkit.io._torch_pickle import (
    LEGACY_MAGIC,
    STORAGE_DTYPES,
    RestrictedUnpickler,
    StorageRef,
    TensorRef,
    restricted_load,
)

__all__ = ["read_torch"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_NESTING_KEYS = ("state_dict", "model")


def read_torch(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the state dict of a PyTorch checkpoint as ``{name: array}``.

    Accepts both the zip format and the legacy format of ``torch.save``. A state dict
    nested under a ``"state_dict"`` or ``"model"`` key (training checkpoints) is found,
    nested dicts are flattened with ``.``, non-tensor entries are dropped, and the
    ``module.`` prefix that ``nn.DataParallel`` adds is stripped.

    Arrays keep their dtype, except **bfloat16, which becomes float32** (NumPy has no
    bfloat16; the widening is exact). No two arrays share memory: tensors that were views
    or shared a storage are copied out.

    Raises:
        WeightsError: the file is missing, not a PyTorch checkpoint, truncated or
            corrupted, references a global other than the tensor-rebuild functions
            (it is never imported or called), or holds no tensors.
    """
    source = Path(os.fspath(path))
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        raise WeightsError(f"cannot read {source}: file not found") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {source}: {exc.strerror or exc}") from None
    with handle:
        head = handle.read(4)
        handle.seek(0)
        try:
            if head == _ZIP_MAGIC:
                tensors = _read_zip(handle, source)
            elif head[:1] == bytes([_PICKLE_PROTO]):
                tensors = _read_legacy(handle, source)
            else:
                raise WeightsError(
                    f"{source} is not a PyTorch checkpoint: it starts with {head!r}, expected "
                    "a zip archive (torch.save) or a pickle (legacy torch.save)"
                )
        except (WeightsError, MemoryError):
            raise
        except Exception as exc:  # any parse failure of untrusted bytes is a bad file
            raise WeightsError(
                f"{source} is not a readable PyTorch checkpoint (truncated or corrupted?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return tensors


# --------------------------------------------------------------------------- zip format


def _read_zip(handle: BinaryIO, source: Path) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise WeightsError(
            f"{source} looks like a torch zip checkpoint but its archive is unreadable "
            f"(truncated or corrupted?): {exc}"
        ) from None
    with archive:
        prefix = _zip_prefix(archive, source)
        byteorder = _zip_byteorder(archive, prefix)
        with archive.open(f"{prefix}/data.pkl") as pickled:
            unpickler = RestrictedUnpickler(pickled, str(source))
            obj = unpickler.load()
        refs = _select_state_dict(obj, source)

        def read_storage(key: str, nbytes: int) -> np.ndarray:
            return _read_zip_member(archive, handle, f"{prefix}/data/{key}", nbytes, source)

        return _materialize_all(refs, _storages_in_order(refs), read_storage, byteorder, source)


def _zip_prefix(archive: zipfile.ZipFile, source: Path) -> str:
    # The top folder is named after the file's stem at save time, so it cannot be guessed.
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            return parts[0]
    if any(name.endswith("/constants.pkl") for name in archive.namelist()):
        raise WeightsError(
            f"{source} is a TorchScript archive (torch.jit.save), not a state dict; "
            "save model.state_dict() with torch.save instead"
        )
    raise WeightsError(f"{source} is a zip archive but not a torch checkpoint: no data.pkl inside")


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    try:
        order = archive.read(f"{prefix}/byteorder").decode("ascii").strip()
    except KeyError:  # files from before the record existed are little-endian
        return "little"
    if order not in ("little", "big"):
        raise ValueError(f"byteorder record is {order!r}, expected 'little' or 'big'")
    return order


def _read_zip_member(archive: zipfile.ZipFile, handle: BinaryIO, name: str, nbytes: int,
                     source: Path) -> np.ndarray:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise WeightsError(f"{source} is corrupted: storage record {name} is missing") from None
    if info.file_size < nbytes:
        raise WeightsError(
            f"{source} is corrupted: storage record {name} holds {info.file_size} bytes, "
            f"its tensors need {nbytes}"
        )
    if info.compress_type != zipfile.ZIP_STORED:
        # torch never compresses, but a re-zipped file may be; this path costs one extra copy.
        return np.frombuffer(archive.read(name), dtype=np.uint8, count=nbytes).copy()
    # Read the stored bytes straight into the destination buffer: zipfile would first
    # build a bytes object of the whole record and double the memory of big layers.
    handle.seek(info.header_offset)
    header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if header[0] != 0x04034B50:
        raise WeightsError(f"{source} is corrupted: bad zip header for {name}")
    name_len, extra_len = header[9], header[10]
    handle.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    return _read_exactly(handle, nbytes, name, source)


# ------------------------------------------------------------------------ legacy format


def _read_legacy(handle: BinaryIO, source: Path) -> dict[str, np.ndarray]:
    magic = restricted_load(handle, str(source))
    if magic != LEGACY_MAGIC:
        raise WeightsError(
            f"{source} is a pickle but not a PyTorch checkpoint (no torch magic number); "
            "cnnkit reads only torch.save files"
        )
    protocol = restricted_load(handle, str(source))
    if protocol != 1001:
        raise WeightsError(f"{source}: unsupported legacy torch protocol {protocol!r}, expected 1001")
    sys_info = restricted_load(handle, str(source))
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    unpickler = RestrictedUnpickler(handle, str(source))
    obj = unpickler.load()
    keys = restricted_load(handle, str(source))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{source} is corrupted: the storage key list is {type(keys).__name__}")
    refs = _select_state_dict(obj, source)
    byteorder = "little" if little else "big"
    wanted = {ref.storage.key for ref in refs.values()}
    count_format = "<q" if little else ">q"
    order = [key for key in keys if key in wanted]
    offsets = _legacy_offsets(handle, keys, unpickler.storages, wanted, count_format, source)

    def read_storage(key: str, nbytes: int) -> np.ndarray:
        handle.seek(offsets[key])
        return _read_exactly(handle, nbytes, f"storage {key}", source)

    return _materialize_all(refs, order, read_storage, byteorder, source)


def _legacy_offsets(handle: BinaryIO, keys: list[str], storages: dict[str, StorageRef],
                    wanted: set[str], count_format: str, source: Path) -> dict[str, int]:
    """Walk the storage section, checking each count header; return wanted data offsets."""
    offsets = {}
    for key in keys:
        if key not in storages:
            raise WeightsError(f"{source} is corrupted: storage {key} is listed but never used")
        storage = storages[key]
        header = handle.read(8)
        if len(header) != 8:
            raise WeightsError(f"{source} is truncated: storage {key} is missing")
        (count,) = struct.unpack(count_format, header)
        if count != storage.numel:
            raise WeightsError(
                f"{source} is corrupted: storage {key} has {count} elements, "
                f"the pickle says {storage.numel}"
            )
        if key in wanted:
            offsets[key] = handle.tell()
        handle.seek(count * STORAGE_DTYPES[storage.dtype].itemsize, os.SEEK_CUR)
    if handle.tell() > os.fstat(handle.fileno()).st_size:  # seek() past the end does not fail
        raise WeightsError(f"{source} is truncated: its last storage ends past the end of the file")
    missing = wanted - offsets.keys()
    if missing:
        raise WeightsError(f"{source} is corrupted: storages {sorted(missing)} are not in the file")
    return offsets


# ------------------------------------------------------------------ shared by both formats


def _read_exactly(handle: BinaryIO, nbytes: int, what: str, source: Path) -> np.ndarray:
    buffer = np.empty(nbytes, dtype=np.uint8)
    got = handle.readinto(memoryview(buffer)) if nbytes else 0
    if got != nbytes:
        raise WeightsError(
            f"{source} is truncated: {what} needs {nbytes} bytes, only {got} are left in the file"
        )
    return buffer


def _select_state_dict(obj: Any, source: Path) -> dict[str, TensorRef]:
    """Find the state dict in a checkpoint object and flatten it to ``{name: TensorRef}``."""
    while isinstance(obj, dict):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    if isinstance(obj, TensorRef):
        raise WeightsError(f"{source} holds a single tensor, not a state dict of named tensors")
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{source} holds a {type(obj).__name__}, expected a state dict (a dict of tensors)"
        )
    refs: dict[str, TensorRef] = {}
    for name, ref in _flatten(obj, ""):
        short = name.removeprefix("module.")
        if short in refs:
            raise WeightsError(
                f"{source}: key {name!r} collides with {short!r} once the DataParallel "
                "'module.' prefix is removed"
            )
        refs[short] = ref
    if not refs:
        raise WeightsError(f"{source} holds no tensors (keys: {list(obj)[:10]})")
    return refs


def _flatten(mapping: dict, prefix: str) -> Iterable[tuple[str, TensorRef]]:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, TensorRef):
            yield name, value
        elif isinstance(value, dict):
            yield from _flatten(value, name + ".")


def _storages_in_order(refs: dict[str, TensorRef]) -> list[str]:
    return list(dict.fromkeys(ref.storage.key for ref in refs.values()))


def _materialize_all(refs: dict[str, TensorRef], order: list[str],
                     read_storage: Callable[[str, int], np.ndarray], byteorder: str,
                     source: Path) -> dict[str, np.ndarray]:
    """Read each storage once, cut its tensors out of it, then let the storage go."""
    users: dict[str, list[str]] = defaultdict(list)
    for name, ref in refs.items():
        users[ref.storage.key].append(name)
    out: dict[str, np.ndarray] = {}
    for key in order:
        names = users[key]
        storage = refs[names[0]].storage
        raw = read_storage(key, storage.numel * STORAGE_DTYPES[storage.dtype].itemsize)
        for name in names:
            out[name] = _materialize(refs[name], raw, len(names) == 1, byteorder, name, source)
        del raw
    return {name: out[name] for name in refs}


def _materialize(ref: TensorRef, raw: np.ndarray, sole_user: bool, byteorder: str, name: str,
                 source: Path) -> np.ndarray:
    """Cut one tensor out of its storage bytes; reuse the buffer when nothing is lost."""
    stored = STORAGE_DTYPES[ref.dtype].newbyteorder("<" if byteorder == "little" else ">")
    elements = raw[: raw.size - raw.size % stored.itemsize].view(stored)
    numel = math.prod(ref.shape)
    first = ref.storage.base + ref.offset
    if numel:
        last = first + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if last >= elements.size:
            raise WeightsError(
                f"{source} is corrupted: tensor {name!r} (shape {ref.shape}, stride "
                f"{ref.stride}, offset {ref.offset}) reaches element {last} of a storage "
                f"holding {elements.size}"
            )
    if numel == 0:
        array = np.empty(ref.shape, dtype=stored)
    elif sole_user and first == 0 and numel == elements.size and _is_contiguous(ref):
        array = elements.reshape(ref.shape)
    else:
        strides = tuple(s * stored.itemsize for s in ref.stride)
        window = np.lib.stride_tricks.as_strided(
            elements[first:], shape=ref.shape, strides=strides, writeable=False
        )
        array = np.array(window, order="C")
    return _to_native(array, ref.dtype)


def _is_contiguous(ref: TensorRef) -> bool:
    expected = 1
    for size, stride in zip(reversed(ref.shape), reversed(ref.stride)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _to_native(array: np.ndarray, torch_dtype: str) -> np.ndarray:
    if not array.dtype.isnative:
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    if torch_dtype == "bfloat16":
        # bfloat16 is the upper half of a float32: shifting the bits up is exact.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
