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
    checked_stream,
    restricted_load,
)

__all__ = ["read_torch"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_NESTING_KEYS = ("state_dict", "model")

# Limits on what a file can make the reader do. Real state dicts nest a few levels and
# hold at most some 10^5 entries; real names are well under 300 characters.
MAX_DEPTH = 32
MAX_ENTRIES = 1_000_000
MAX_NAME_LENGTH = 4096
# A DEFLATE entry may inflate to at most this many times its compressed size (plus a
# MiB): weights compress about 1.1:1, so only crafted files come near it.
MAX_INFLATE_RATIO = 100
# The returned arrays may take at most this many times the file's size (plus 64 MiB):
# bfloat16 widening doubles, and tied weights come out once per name.
MAX_OUTPUT_RATIO = 8
# A view with zero or overlapping strides (tensor.expand) may repeat its storage's elements
# into at most this many bytes: larger ones make gigabytes out of a few bytes of file.
MAX_EXPANDED_BYTES = 1 << 20
_SLACK_BYTES = {"inflate": 1 << 20, "output": 64 << 20}


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
        refs = _select_state_dict(obj, source)

        def read_storage(key: str, nbytes: int) -> np.ndarray:
            return _read_zip_member(archive, handle, f"{prefix}/data/{key}", nbytes, source)

        return _materialize_all(refs, _storages_in_order(refs), read_storage, byteorder, source)


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
    limit = MAX_INFLATE_RATIO * info.compress_size + _SLACK_BYTES["inflate"]
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


def _select_state_dict(obj: Any, source: Path) -> dict[str, TensorRef]:
    """Find the state dict in a checkpoint object and flatten it to ``{name: TensorRef}``."""
    seen: set[int] = set()
    while isinstance(obj, dict):
        if id(obj) in seen or len(seen) >= MAX_DEPTH:
            raise WeightsError(
                f"{source}: its 'state_dict'/'model' entries "
                + ("contain themselves (a cycle)" if id(obj) in seen else f"nest deeper than {MAX_DEPTH}")
                + "; torch.save of model.state_dict() never does this"
            )
        seen.add(id(obj))
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
    for name, ref in _Flattener(source).walk(obj):
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


class _Flattener:
    """Walk nested dicts to ``(dotted name, TensorRef)`` pairs, visiting each dict once.

    A pickle can build a dict that contains itself, or 40 levels of ``{'a': x, 'b': x}``
    sharing one child (2^40 paths from a few hundred bytes): cycles and shared sub-dicts
    are refused, and depth, entries and name length are capped.
    """

    def __init__(self, source: Path):
        self.source = source
        self.entries = 0
        self.path: set[int] = set()
        self.seen: set[int] = set()

    def walk(self, mapping: dict, prefix: str = "") -> Iterable[tuple[str, TensorRef]]:
        if len(self.path) >= MAX_DEPTH:
            self._refuse(f"nests dicts deeper than {MAX_DEPTH} levels (at {prefix[:80]!r})")
        self.path.add(id(mapping))
        self.seen.add(id(mapping))
        for key, value in mapping.items():
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                self._refuse(f"has more than {MAX_ENTRIES} state-dict entries")
            name = f"{prefix}{key}"
            if len(name) > MAX_NAME_LENGTH:
                self._refuse(f"has a key longer than {MAX_NAME_LENGTH} characters ({name[:80]!r}...)")
            if isinstance(value, TensorRef):
                yield name, value
            elif isinstance(value, dict):
                if id(value) in self.path:
                    self._refuse(f"has a dict that contains itself (a cycle) at key {name[:80]!r}")
                if id(value) in self.seen:
                    self._refuse(f"reaches one dict by two paths (a shared sub-dict) at key {name[:80]!r}")
                yield from self.walk(value, name + ".")
        self.path.discard(id(mapping))

    def _refuse(self, what: str) -> None:
        raise WeightsError(
            f"{self.source} {what}; a state dict saved by torch.save(model.state_dict()) "
            "never does, so the file is corrupted or crafted"
        )


def _storages_in_order(refs: dict[str, TensorRef]) -> list[str]:
    return list(dict.fromkeys(ref.storage.key for ref in refs.values()))


def _materialize_all(refs: dict[str, TensorRef], order: list[str],
                     read_storage: Callable[[str, int], np.ndarray], byteorder: str,
                     source: Path) -> dict[str, np.ndarray]:
    """Check every tensor against its storage, then read each storage once and cut its
    tensors out of it. Nothing is allocated before every check has passed."""
    users: dict[str, list[str]] = defaultdict(list)
    firsts = {}
    for name, ref in refs.items():
        users[ref.storage.key].append(name)
        firsts[name] = _checked_window(ref, refs[users[ref.storage.key][0]].storage, name, source)
    _check_output_size(refs, source)
    out: dict[str, np.ndarray] = {}
    for key in order:
        names = users[key]
        storage = refs[names[0]].storage
        raw = read_storage(key, _storage_bytes(storage))
        for name in names:
            out[name] = _materialize(refs[name], firsts[name], raw, len(names) == 1, byteorder)
        del raw
    return {name: out[name] for name in refs}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _storage_bytes(storage: StorageRef) -> int:
    return storage.numel * STORAGE_DTYPES[storage.dtype].itemsize


def _checked_window(ref: TensorRef, root: StorageRef, name: str, source: Path) -> int:
    """Validate the final tensor record against its storage; return its first element.

    Runs after the whole pickle is loaded, on every field, so no opcode order can slip a
    negative stride, a negative offset or an out-of-range shape past it.
    """
    storage = ref.storage
    fields_ok = (
        isinstance(ref, TensorRef) and isinstance(storage, StorageRef)
        and ref.dtype in STORAGE_DTYPES and storage.dtype in STORAGE_DTYPES
        and all(_is_count(v) for v in (ref.offset, storage.base, storage.numel))
        and isinstance(ref.shape, tuple) and isinstance(ref.stride, tuple)
        and len(ref.shape) == len(ref.stride)
        and all(_is_count(v) for v in ref.shape + ref.stride)
    )
    described = f"tensor {name!r} (shape {ref.shape}, stride {ref.stride}, offset {ref.offset})"
    if not fields_ok:
        raise WeightsError(
            f"{source} is corrupted: {described} has a field that is not a non-negative int "
            "or a dtype torch knows"
        )
    if (storage.key, storage.dtype, storage.numel) != (root.key, root.dtype, root.numel):
        raise WeightsError(f"{source} is corrupted: storage {storage.key!r} is described twice")
    elements = _storage_bytes(storage) // STORAGE_DTYPES[ref.dtype].itemsize
    first = storage.base + ref.offset
    numel = math.prod(ref.shape)
    if numel == 0:
        return first
    last = first + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= elements:
        raise WeightsError(
            f"{source} is corrupted: {described} reaches element {last} of a storage "
            f"holding {elements}"
        )
    expanded_bytes = numel * STORAGE_DTYPES[ref.dtype].itemsize
    if numel > last - first + 1 and expanded_bytes > MAX_EXPANDED_BYTES:
        raise WeightsError(
            f"{source}: {described} repeats storage elements to make {numel} values from "
            f"{last - first + 1} (a zero or overlapping stride, as tensor.expand makes); "
            f"cnnkit expands views only up to {MAX_EXPANDED_BYTES >> 20} MiB; save "
            "tensor.contiguous() instead"
        )
    return first


def _check_output_size(refs: dict[str, TensorRef], source: Path) -> None:
    file_size = os.path.getsize(source)
    total = sum(math.prod(ref.shape) * (4 if ref.dtype == "bfloat16" else
                                        STORAGE_DTYPES[ref.dtype].itemsize) for ref in refs.values())
    limit = MAX_OUTPUT_RATIO * file_size + _SLACK_BYTES["output"]
    if total > limit:
        raise WeightsError(
            f"{source}: its {len(refs)} tensors would take {total} bytes, more than "
            f"{MAX_OUTPUT_RATIO} times the {file_size}-byte file (plus 64 MiB) that cnnkit "
            "accepts; the same storage is used under too many names (a crafted file?)"
        )


def _materialize(ref: TensorRef, first: int, raw: np.ndarray, sole_user: bool,
                 byteorder: str) -> np.ndarray:
    """Cut one checked tensor out of its storage bytes; reuse the buffer when nothing is lost."""
    stored = STORAGE_DTYPES[ref.dtype].newbyteorder("<" if byteorder == "little" else ">")
    elements = raw[: raw.size - raw.size % stored.itemsize].view(stored)
    numel = math.prod(ref.shape)
    if numel == 0:
        array = np.empty(ref.shape, dtype=stored)
    elif sole_user and first == 0 and numel == elements.size and _is_contiguous(ref):
        array = elements.reshape(ref.shape)
    else:
        # Bounds were checked by _checked_window; a size-1 axis never moves, so its
        # stride (which nothing bounds) is dropped rather than handed to NumPy.
        strides = tuple(s * stored.itemsize if n > 1 else 0 for n, s in zip(ref.shape, ref.stride))
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
