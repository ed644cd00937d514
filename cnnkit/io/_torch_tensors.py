"""From the tensor records a torch pickle describes to NumPy arrays, within bounds.

:mod:`cnnkit.io.torch_reader` parses the file formats and reads storage bytes; this module
finds the state dict in the unpickled object, checks every tensor record against its
storage (after the whole pickle ran, so nothing can change a record once checked), and cuts
the arrays out of the storage bytes. Every check runs before anything is allocated.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import WeightsError
from cnnkit.io._torch_pickle import STORAGE_DTYPES, StorageRef, TensorRef

_NESTING_KEYS = ("state_dict", "model")

# Limits on what a file can make the reader do. Real state dicts nest a few levels and
# hold at most some 10^5 entries; real names are well under 300 characters.
MAX_DEPTH = 32
MAX_ENTRIES = 1_000_000
MAX_NAME_LENGTH = 4096
# The returned arrays may take at most this many times the file's size (plus 64 MiB):
# bfloat16 widening doubles, and tied weights come out once per name.
MAX_OUTPUT_RATIO = 8
_OUTPUT_SLACK = 64 << 20
# A view with zero or overlapping strides (tensor.expand) may repeat its storage's elements
# into at most this many bytes: larger ones make gigabytes out of a few bytes of file.
MAX_EXPANDED_BYTES = 1 << 20


def select_state_dict(obj: Any, source: Path) -> dict[str, TensorRef]:
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


def storages_in_order(refs: dict[str, TensorRef]) -> list[str]:
    return list(dict.fromkeys(ref.storage.key for ref in refs.values()))


def materialize_all(refs: dict[str, TensorRef], order: list[str],
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
    limit = MAX_OUTPUT_RATIO * file_size + _OUTPUT_SLACK
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
