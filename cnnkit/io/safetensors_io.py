"""Read and write ``.safetensors`` weight files (the ``safetensors`` package, NumPy flavour).

safetensors is cnnkit's native weight format: a JSON header (names, dtypes, shapes, byte
ranges and a free ``__metadata__`` dict of strings) followed by raw little-endian bytes.
It holds no code, so loading one is safe by construction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from cnnkit.errors import WeightsError
from cnnkit.io.atomic import atomic_path

__all__ = ["read_safetensors", "read_safetensors_metadata", "read_safetensors_shapes",
           "write_safetensors"]


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as ``{name: array}`` (writable arrays).

    The format does not record insertion order; names come back in file order.

    Raises:
        WeightsError: the file is missing or is not a valid safetensors file.
    """
    source = _existing_file(path)
    try:
        return load_file(source)
    except MemoryError:
        raise WeightsError(f"{source}: not enough memory to read its tensors") from None
    except Exception as exc:  # any failure to parse untrusted bytes is a bad file
        raise _read_error(source, exc) from None


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the header's ``__metadata__`` dict (empty when the file has none).

    Only the header is read, so this is cheap even for a large file.
    """
    source = _existing_file(path)
    try:
        with safe_open(source, framework="np") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # any failure to parse untrusted bytes is a bad file
        raise _read_error(source, exc) from None


def read_safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Return ``{name: shape}`` from the header alone: what the file holds, before reading it."""
    source = _existing_file(path)
    try:
        with safe_open(source, framework="np") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # any failure to parse untrusted bytes is a bad file
        raise _read_error(source, exc) from None


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (and optional string ``metadata``) to ``path`` atomically.

    Non-contiguous arrays are copied to C order first; scalars and lists are rejected
    rather than guessed at. An existing file at ``path`` is replaced only once the new
    one is complete.

    Raises:
        WeightsError: a name is not a string, a value is not an array of a dtype
            safetensors stores, a metadata entry is not ``str -> str``, or the file
            cannot be written.
    """
    target = Path(os.fspath(path))
    arrays = _contiguous_arrays(tensors, target)
    meta = _string_metadata(metadata, target)
    try:
        with atomic_path(target) as tmp:
            save_file(arrays, tmp, metadata=meta)
    except SafetensorError as exc:
        raise WeightsError(f"cannot write {target}: {exc}") from None
    except OSError as exc:
        raise WeightsError(
            f"cannot write {target}: {exc.strerror or exc}; check that the directory "
            "exists and is writable"
        ) from None


def _contiguous_arrays(tensors: Mapping[str, np.ndarray], target: Path) -> dict[str, np.ndarray]:
    if not isinstance(tensors, Mapping):
        raise WeightsError(
            f"write_safetensors({target}): tensors must be a dict of name -> numpy array, "
            f"received {type(tensors).__name__}"
        )
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise WeightsError(
                f"write_safetensors({target}): tensor names must be str, received {name!r}"
            )
        if not isinstance(value, np.ndarray):
            raise WeightsError(
                f"write_safetensors({target}): tensor {name!r} must be a numpy array, "
                f"received {type(value).__name__}; wrap it with np.asarray"
            )
        # safetensors reads raw memory from the data pointer, so layout must be C order
        # (not np.ascontiguousarray, which would turn a 0-d array into shape (1,)).
        arrays[name] = value if value.flags.c_contiguous else value.copy(order="C")
    return arrays


def _string_metadata(metadata: Mapping[str, str] | None, target: Path) -> dict[str, str] | None:
    if metadata is None:
        return None
    bad = {k: v for k, v in dict(metadata).items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        key, value = next(iter(bad.items()))
        raise WeightsError(
            f"write_safetensors({target}): metadata must map str to str, received "
            f"{key!r}: {type(value).__name__}; serialise values with json.dumps"
        )
    return dict(metadata)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    source = Path(os.fspath(path))
    if not source.is_file():
        reason = "is a directory" if source.is_dir() else "file not found"
        raise WeightsError(f"cannot read {source}: {reason}")
    return source


def _read_error(source: Path, exc: Exception) -> WeightsError:
    return WeightsError(
        f"{source} is not a readable safetensors file (truncated or another format?): {exc}"
    )
