"""Atomic file writes: a file either keeps its old content or gets the whole new one.

A writer fills a temporary file in the target's directory (same file system, so the final
``os.replace`` is a rename), flushes and fsyncs it, renames it onto the target and fsyncs the
directory so the rename itself survives a crash. On any failure the temporary file is removed
and the target is untouched.

A process killed inside the block (``kill -9``) cannot remove its temporary file, so each write
first removes the temporary files in its folder whose writer is no longer running: the name
carries the writer's process id, and only names of cnnkit's own pattern are ever touched.
The final file gets the permissions a plain ``open()`` would give it (``0o666`` less the umask),
even when the block's writer replaced the temporary file by one of its own (safetensors does,
with mode ``0o600``).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_open", "atomic_write", "check_writable"]

# ".<target name>.<writer's pid>-<12 hex digits>.tmp": nothing else in a folder is ever removed.
_TEMP_PATTERN = re.compile(r"^\..+\.(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp$")


def _temp_name(target: Path) -> Path:
    # A leading dot hides the partial file from casual listings and globbing of "*.ext".
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def _process_is_running(pid: int) -> bool:
    """False only when no process ``pid`` exists; this process counts as running (another thread
    may be writing), and so does another user's process, which ``kill`` may not signal."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Remove the temporary files that killed writers left in ``directory``; return them.

    A file is removed only when its name has cnnkit's temporary pattern and the process id in
    it is not running, so a live writer's file (of this or another process) is never touched.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if _process_is_running(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:   # already gone, or not ours to remove: a clean-up never fails a write
            pass
    return removed


def _create_exclusive(path: Path) -> int:
    """Create ``path`` empty and return its permission bits.

    O_EXCL guarantees we never clobber another writer's temp file; mode 0o666 lets the
    process umask decide the permissions, as a plain open() would.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)


def _keep_mode(path: Path, mode: int) -> None:
    """Give ``path`` the permissions it was created with, if the block's writer changed them."""
    if os.stat(path).st_mode & 0o777 != mode:
        os.chmod(path, mode)


def _naming(error: OSError, target: Path) -> OSError:
    """``error`` naming ``target``, the user's path, rather than the hidden temporary file."""
    return type(error)(error.errno, error.strerror, os.fspath(target))


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise ``OSError`` naming ``path`` unless a file can be written there atomically.

    Creates and removes one temporary file beside ``path``; meant for checking an output
    before a long computation, so the computation is not lost to a typo.
    """
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(21, "is a directory", os.fspath(target))
    tmp = _temp_name(target)
    try:
        _create_exclusive(tmp)
    except OSError as error:
        raise _naming(error, target) from None
    _remove_quietly(tmp)


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
    remove_stale_temp_files(target.parent if str(target.parent) else Path("."))
    tmp = _temp_name(target)
    try:
        mode = _create_exclusive(tmp)
    except OSError as error:
        raise _naming(error, target) from None
    try:
        yield tmp
        _keep_mode(tmp, mode)
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
