"""A pickle reader for PyTorch checkpoints that can only build tensor descriptions.

A ``torch.save`` file is a pickle whose tensors are calls to a few ``torch._utils`` rebuild
functions, applied to "persistent ids" naming raw storages kept outside the pickle. This
module replaces each of those globals with a local stand-in that only records what the call
asked for (:class:`TensorRef`, :class:`StorageRef`), and refuses every other global, so
unpickling a hostile file can neither import nor call anything: the only callables a
pickle can reach are the ones :meth:`RestrictedUnpickler.find_class` returns.

Nothing here reads tensor bytes; :mod:`cnnkit.io.torch_reader` does that afterwards.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from cnnkit.errors import WeightsError

# torch dtype name -> NumPy dtype of one stored element. bfloat16 has no NumPy dtype: its
# elements are read as uint16 bit patterns and widened to float32 by the reader.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}

# Legacy typed storage classes (``torch.FloatStorage`` ...) name their element type.
_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    # Untyped storages hold bytes; a tensor on one says its dtype (``_rebuild_tensor_v3``).
    "UntypedStorage": "uint8",
}

# ``torch.float32`` and friends pickle as the global ``torch.<name>``; aliases included.
_TORCH_DTYPE_NAMES = {name: name for name in STORAGE_DTYPES} | {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Sealed:
    """Refuse the pickle BUILD opcode on the records this module hands to a pickle.

    ``frozen=True`` stops ``setattr``, but BUILD with a dict state writes straight into the
    instance ``__dict__``; a pickle could then rebuild a tensor that passes every check and
    change its stride or offset afterwards. BUILD calls ``__setstate__`` when a class has
    one, so this one refuses.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ValueError(
            f"the pickle tries to change a {type(self).__name__} after building it "
            "(BUILD opcode), which torch.save never does: the file is crafted or corrupted; "
            "get the weights from their source again"
        )


@dataclass(frozen=True)
class StorageType(_Sealed):
    """Stand-in for a ``torch.*Storage`` class: only its element dtype matters."""

    dtype: str


@dataclass(frozen=True)
class TorchDType(_Sealed):
    """Stand-in for a ``torch.dtype`` object such as ``torch.float16``."""

    name: str


@dataclass(frozen=True)
class StorageRef(_Sealed):
    """A storage a pickle refers to: its key in the file, element dtype and element count.

    ``base`` is the element offset of a storage *view* (very old legacy files only) into
    the root storage ``key``; it is 0 for ordinary storages.
    """

    key: str
    dtype: str
    numel: int
    base: int = 0


@dataclass(frozen=True)
class TensorRef(_Sealed):
    """A tensor a pickle asked to rebuild: a strided window on a storage, not yet read."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _tensor_ref(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise ValueError(f"a tensor must be rebuilt from a storage, got {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"tensor storage offset must be a non-negative int, got {offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ValueError(f"tensor size {shape} and stride {strides} differ in length")
    return TensorRef(storage, offset, shape, strides, dtype or storage.dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor_ref(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, TorchDType) or dtype.name not in STORAGE_DTYPES:
        raise ValueError(f"tensor dtype must be a torch dtype, got {dtype!r}")
    return _tensor_ref(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    # A Parameter is its tensor plus a flag cnnkit keeps elsewhere (Parameter.trainable).
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


class _StandIn(_Sealed):
    """A callable handed to the pickle in place of a torch function.

    A fresh one is made per lookup, it has no ``__dict__`` and refuses BUILD, so a pickle
    cannot alter state shared with later loads, as it could on a plain module-level
    function (``__defaults__`` and the like), nor swap the function it calls.
    """

    __slots__ = ("_func",)

    def __init__(self, func):
        self._func = func

    def __call__(self, *args, **kwargs):
        return self._func(*args, **kwargs)


_REBUILDERS: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle a torch checkpoint pickle, allowing only tensor-rebuild globals.

    ``source`` names the file in error messages. ``storages`` collects every storage the
    pickle mentions (key -> :class:`StorageRef` of the root storage), which the legacy
    reader needs to skip storages the caller does not want.
    """

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Return the harmless stand-in for an allowed global; refuse all others."""
        qualified = f"{module}.{name}"
        if qualified == "collections.OrderedDict":
            return collections.OrderedDict  # a C type: immutable, and harmless to call
        if qualified in _REBUILDERS:
            return _StandIn(_REBUILDERS[qualified])
        if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_CLASSES:
            return StorageType(_STORAGE_CLASSES[name])
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return TorchDType(_TORCH_DTYPE_NAMES[name])
        raise WeightsError(
            f"refusing to load {qualified} from {self.source}: a weights file may only "
            "reference tensor-rebuild functions (this one may be unsupported, e.g. a "
            "quantized or sparse tensor, a pickled nn.Module, or hostile); save "
            "model.state_dict() with plain tensors instead"
        )

    def persistent_load(self, pid: Any) -> StorageRef:
        """Turn a ``('storage', type, key, location, numel[, view])`` id into a StorageRef."""
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise ValueError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, StorageType) or storage_type.dtype not in STORAGE_DTYPES:
            raise ValueError(f"persistent id names a non-storage type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"malformed storage id {pid!r:.80}")
        root = StorageRef(key, storage_type.dtype, numel)
        known = self.storages.setdefault(key, root)
        if known != root:
            raise ValueError(f"storage {key!r} is described twice, as {known} and {root}")
        if view is None:
            return root
        return self._storage_view(root, view)

    @staticmethod
    def _storage_view(root: StorageRef, view: Any) -> StorageRef:
        # Legacy files from torch < 0.4 could pickle a view (view_key, offset, size) of a
        # root storage; the tensor offsets are then relative to the view.
        if not (isinstance(view, tuple) and len(view) == 3):
            raise ValueError(f"malformed storage view {view!r:.80}")
        _view_key, offset, size = view
        if not (isinstance(offset, int) and isinstance(size, int)) or offset < 0 or size < 0:
            raise ValueError(f"malformed storage view {view!r:.80}")
        if offset + size > root.numel:
            raise ValueError(f"storage view {view!r} exceeds its storage of {root.numel} elements")
        return StorageRef(root.key, root.dtype, root.numel, base=offset)


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


class _Bounded:
    """A read-only view of a file that never reads past ``end``.

    The unpickler asks ``read(n)`` for the length a pickle declares, and a buffered file
    allocates ``n`` bytes before it knows how many are there: a flipped length byte would
    ask for terabytes. Capping each request at what is left keeps reads to real bytes.
    """

    def __init__(self, file: BinaryIO, end: int):
        self.file, self.end = file, end

    def _left(self, n: int | None) -> int:
        left = max(self.end - self.file.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self.file.read(self._left(n))

    def readline(self, n: int | None = -1) -> bytes:
        return self.file.readline(self._left(n))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        return self.file.readinto(view[: self._left(len(view))])

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)


def checked_stream(file: BinaryIO, source: str) -> BinaryIO:
    """Return ``file`` for unpickling, after walking the next pickle's opcodes once.

    The walk (``pickletools.genops``) reads every length-prefixed argument from the bounded
    view, so a length larger than the bytes that follow fails here, cheaply, instead of
    making the C unpickler allocate it (it sizes a bytes object before reading into it).
    Memo indices are checked too: the unpickler grows its memo table to the largest index
    it is given, and one PUT of index 2**31 costs 32 GB. Nothing is built or called here.
    """
    start = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    bounded = _Bounded(file, end)
    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(bounded)):
            if opcode.name == "FRAME" and arg > end - file.tell():
                raise ValueError(f"a pickle frame of {arg} bytes, with {end - file.tell()} left")
            if opcode.name in _MEMO_PUTS and not 0 <= int(arg) <= count:
                raise ValueError(f"memo index {arg} at opcode {count}; indices count up from 0")
    except (ValueError, EOFError) as exc:
        raise WeightsError(
            f"{source} is truncated or corrupted: its pickle does not parse ({exc}); "
            "get the weights from their source again"
        ) from None
    file.seek(start)
    return bounded  # type: ignore[return-value]


def restricted_load(file: BinaryIO, source: str) -> Any:
    """Load one plain pickle (no persistent ids expected) with the restricted unpickler."""
    return RestrictedUnpickler(checked_stream(file, source), source).load()
