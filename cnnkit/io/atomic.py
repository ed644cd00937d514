"""Atomic file writes: a file either keeps its old content or gets the whole new one.

A writer fills a temporary file in the target's directory (same file system, so the final
``os.replace`` is a rename), flushes and fsyncs it, renames it onto the target and fsyncs the
directory so the rename itself survives a crash. On any failure the temporary file is removed
and the target is untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_open", "atomic_write"]


def _temp_name(target: Path) -> Path:
    # A leading dot hides the partial file from casual listings and globbing of "*.ext".
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _create_exclusive(path: Path) -> None:
    # O_EXCL guarantees we never clobber another writer's temp file; mode 0o666 lets the
    # process umask decide the final permissions, as a plain open() would.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it atomically replaces ``path``.

    The block may open, write and close the temporary path any way it likes (including
    libraries that take a file name). When the block exits normally the file is fsynced,
    ``os.replace``d onto ``path`` and the directory is fsynced. When it raises, the
    temporary file is deleted and ``path`` keeps its previous content.

    Raises ``OSError`` when the directory does not exist or is not writable; callers wrap
    it in the error type of their domain.

    Example::

        with atomic_path("model.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    target = Path(os.fspath(path))
    tmp = _temp_name(target)
    _create_exclusive(tmp)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(target.parent if str(target.parent) else Path("."))


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO]:
    """Open a file object whose content replaces ``path`` atomically when the block succeeds.

    ``mode`` must be a write mode (``"w"``, ``"wb"``, ``"x"`` is not meaningful here).
    Text mode uses ``encoding`` (UTF-8 when omitted).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', received mode={mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> None:
    """Call ``write_fn(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
