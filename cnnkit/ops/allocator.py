"""Training reuses its memory from step to step: the C heap keeps what a step frees for the next.

Every training step allocates the same activation and gradient volumes and frees them again.
glibc's malloc hands out arrays above its mmap threshold (which adapts up to 32 MiB, while
VGG16's first volumes at batch 8 are 100 MB) as fresh pages from the kernel and returns them on
free, so the kernel faults in and zeroes every page again on every step: measured 25,000 page
faults and 0.6 s of system time per VGG16 training step at batch 8, about a tenth of the step.

:func:`keep_freed_memory` (called by every training step) has malloc serve all sizes from its
heap and keep freed memory there: from the second step on, each step's volumes land in the
pages the step before freed, and the page faults are gone (about 200 per VGG16 step). This is
the allocator's reuse, not a pool of cnnkit's own: NumPy still asks for each array, and any
mix of shapes (a last, smaller batch) is served from the same memory. The heap then holds the
peak of training until :func:`release_freed_memory` (called at the end of ``fit``) gives the
free part back to the system.

Only glibc has these controls; elsewhere both functions do nothing. ``CNNKIT_REUSE_MEMORY=0``
leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

ENV_REUSE = "CNNKIT_REUSE_MEMORY"
#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap above this is returned to the system (``mallopt`` takes
#: a C int: 2 GiB is its largest value).
KEPT_BYTES = 2 ** 31 - 1

_lock = threading.Lock()
_kept = False


def keep_freed_memory() -> bool:
    """From now on, serve every array from malloc's heap and keep freed memory there for reuse.

    Once per process (later calls return at once); True when it is in effect.
    """
    global _kept
    if _kept or os.environ.get(ENV_REUSE, "1") == "0":
        return _kept
    with _lock:
        libc = _glibc()
        if not _kept and libc is not None:
            # no mmap: every size comes from the heap; and keep up to KEPT_BYTES free at its top
            _kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
    return _kept


def release_freed_memory() -> None:
    """Return the heap's free memory to the system (``malloc_trim``); live arrays are untouched."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
