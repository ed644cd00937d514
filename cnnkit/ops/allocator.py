"""Keeping freed memory in the C heap for reuse, and giving it back: glibc's malloc settings.

Every training step allocates the same activation and gradient volumes and frees them again.
glibc's malloc hands out arrays above its mmap threshold (which adapts up to 32 MiB, while
VGG16's first volumes at batch 8 are 100 MB) as fresh pages from the kernel and returns them on
free, so the kernel faults in and zeroes every page again on every step: measured 25,000 page
faults and 0.6 s of system time per VGG16 training step at batch 8, about a tenth of the step.

:func:`keep_freed_memory` has malloc serve all sizes from its heap and keep freed memory there:
each step's volumes land in the pages the step before freed, and the page faults are gone
(about 200 per VGG16 step). This is the allocator's reuse, not a pool of cnnkit's own: NumPy
still asks for each array, and any mix of shapes (a last, smaller batch) is served from the
same memory. :func:`stop_keeping_freed_memory` puts the two settings back to the values the
process started with, and :func:`release_freed_memory` gives the heap's free part back to the
system.

These are the mechanisms only: :mod:`cnnkit.ops.runtime` decides when they apply (while a
training step or a ``cnnkit.runtime`` block runs) and records whether they do. Only glibc has
these controls; elsewhere the functions do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap above this is returned to the system while memory is kept
#: (``mallopt`` takes a C int: 2 GiB is its largest value).
KEPT_BYTES = 2 ** 31 - 1
#: glibc's own defaults (malloc.c ``DEFAULT_MMAP_MAX``, ``DEFAULT_TRIM_THRESHOLD``), restored
#: unless the process was started with other values in its environment.
GLIBC_MMAP_MAX = 65536
GLIBC_TRIM_THRESHOLD = 128 * 1024


def keep_freed_memory() -> bool:
    """Serve every array from malloc's heap and keep freed memory there; True when in effect."""
    libc = _glibc()
    # no mmap: every size comes from the heap; and keep up to KEPT_BYTES free at its top
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))


def stop_keeping_freed_memory() -> None:
    """Put malloc's mmap count and trim threshold back to the values the process started with.

    glibc has no way to turn its adaptive mmap threshold back on once either value was set: the
    threshold stays where it was (at least its 128 KiB default); the memory freed from now on is
    returned as glibc's fixed-threshold rules say.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, _started_with("MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max", GLIBC_MMAP_MAX))
        libc.mallopt(M_TRIM_THRESHOLD, _started_with("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold",
                                                     GLIBC_TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Return the heap's free memory to the system (``malloc_trim``); live arrays are untouched."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _started_with(variable: str, tunable: str, default: int) -> int:
    """The value glibc read at start-up: ``GLIBC_TUNABLES`` wins over the older variable."""
    found = os.environ.get(variable)
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == tunable:
            found = value
    try:
        return min(int(found, 0), KEPT_BYTES) if found is not None else default
    except ValueError:   # glibc ignores a value it cannot read; so do we
        return default


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None (looked up
    once: ``platform.libc_ver`` reads the interpreter's binary)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
