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

import io
import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cnnkit.errors import WeightsError
from cnnkit.io._torch_pickle import (
    LEGACY_MAGIC,
    STORAGE_DTYPES,
    RestrictedUnpickler,
    StorageRef,
    checked_stream,
    restricted_load,
)
from cnnkit.io._torch_tensors import materialize_all, select_state_dict, storages_in_order

__all__ = ["read_torch"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
# A DEFLATE entry may inflate to at most this many times its compressed size (plus a
# MiB): weights compress about 1.1:1, so only crafted files come near it. The limits on
# what the pickle describes are in cnnkit.io._torch_tensors.
MAX_INFLATE_RATIO = 100
_INFLATE_SLACK = 1 << 20


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
        except WeightsError:
            raise
        except MemoryError:
            raise WeightsError(
                f"{source}: not enough memory to read it; the limits checked before "
                "allocating passed, so the checkpoint is genuinely this large"
            ) from None
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
        byteorder = _zip_byteorder(archive, prefix, source)
        with _open_member(archive, f"{prefix}/data.pkl", source) as member:
            pickled = io.BytesIO(member.read())  # bounded by the entry's checked size
        obj = RestrictedUnpickler(checked_stream(pickled, str(source)), str(source)).load()
        refs = select_state_dict(obj, source)

        def read_storage(key: str, nbytes: int) -> np.ndarray:
            return _read_zip_member(archive, handle, f"{prefix}/data/{key}", nbytes, source)

        return materialize_all(refs, storages_in_order(refs), read_storage, byteorder, source)


def _open_member(archive: zipfile.ZipFile, name: str, source: Path) -> BinaryIO:
    """Open a zip entry after checking that what it declares fits the file."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise WeightsError(f"{source} is corrupted: record {name} is missing") from None
    _check_entry(info, source)
    return archive.open(info)


def _check_entry(info: zipfile.ZipInfo, source: Path) -> None:
    """Refuse entries whose sizes the file cannot justify, before anything is inflated.

    zipfile stops inflating at the declared ``file_size``, so bounding that by the
    compressed size bounds the memory an entry can cost.
    """
    on_disk = os.path.getsize(source)
    if info.header_offset + info.compress_size > on_disk:
        raise WeightsError(
            f"{source} is truncated or corrupted: zip entry {info.filename} claims "
            f"{info.compress_size} bytes at offset {info.header_offset}, past the end of the "
            f"{on_disk}-byte file"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        return
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise WeightsError(
            f"{source}: zip entry {info.filename} uses compression method "
            f"{info.compress_type}; cnnkit reads stored or DEFLATE entries only (torch.save "
            "writes stored entries: save the checkpoint again with torch.save)"
        )
    limit = MAX_INFLATE_RATIO * info.compress_size + _INFLATE_SLACK
    if info.file_size > limit:
        raise WeightsError(
            f"{source}: zip entry {info.filename} would inflate {info.compress_size} bytes "
            f"to {info.file_size}, more than the {MAX_INFLATE_RATIO}:1 cnnkit accepts "
            "(a zip bomb?); save the checkpoint again with torch.save, which does not compress"
        )


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


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, source: Path) -> str:
    if f"{prefix}/byteorder" not in archive.NameToInfo:
        return "little"  # files from before the record existed are little-endian
    with _open_member(archive, f"{prefix}/byteorder", source) as record:
        order = record.read(16).decode("ascii").strip()
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
    _check_entry(info, source)
    if info.compress_type != zipfile.ZIP_STORED:
        # torch never compresses, but a re-zipped file may be: inflate only what is needed.
        return _inflate_exactly(archive, info, nbytes, source)
    # Read the stored bytes straight into the destination buffer: zipfile would first
    # build a bytes object of the whole record and double the memory of big layers.
    handle.seek(info.header_offset)
    header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if header[0] != 0x04034B50:
        raise WeightsError(f"{source} is corrupted: bad zip header for {name}")
    name_len, extra_len = header[9], header[10]
    handle.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    return _read_exactly(handle, nbytes, name, source)


def _inflate_exactly(archive: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int,
                     source: Path) -> np.ndarray:
    buffer = np.empty(nbytes, dtype=np.uint8)
    view, got = memoryview(buffer), 0
    with archive.open(info) as member:
        while got < nbytes:
            chunk = member.read(min(1 << 20, nbytes - got))
            if not chunk:
                break
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
    if got != nbytes:
        raise WeightsError(
            f"{source} is truncated: storage record {info.filename} inflates to {got} bytes, "
            f"its tensors need {nbytes}"
        )
    return buffer


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
    unpickler = RestrictedUnpickler(checked_stream(handle, str(source)), str(source))
    obj = unpickler.load()
    keys = restricted_load(handle, str(source))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{source} is corrupted: the storage key list is {type(keys).__name__}")
    refs = select_state_dict(obj, source)
    byteorder = "little" if little else "big"
    wanted = {ref.storage.key for ref in refs.values()}
    count_format = "<q" if little else ">q"
    order = [key for key in keys if key in wanted]
    offsets = _legacy_offsets(handle, keys, unpickler.storages, wanted, count_format, source)

    def read_storage(key: str, nbytes: int) -> np.ndarray:
        handle.seek(offsets[key])
        return _read_exactly(handle, nbytes, f"storage {key}", source)

    return materialize_all(refs, order, read_storage, byteorder, source)


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
    left = os.fstat(handle.fileno()).st_size - handle.tell()
    if nbytes > left:  # checked before allocating: the file must hold what it declares
        raise WeightsError(
            f"{source} is truncated: {what} needs {nbytes} bytes, only {max(left, 0)} are "
            "left in the file"
        )
    buffer = np.empty(nbytes, dtype=np.uint8)
    got = handle.readinto(memoryview(buffer)) if nbytes else 0
    if got != nbytes:
        raise WeightsError(
            f"{source} is truncated: {what} needs {nbytes} bytes, only {got} are left in the file"
        )
    return buffer
