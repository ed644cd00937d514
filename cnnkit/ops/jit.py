"""The switch for cnnkit's compiled kernels (Numba), and the one place that imports Numba.

The compiled kernels are fast paths beside NumPy references that stay tested: tile transforms
of Winograd convolution, window gathers, max pooling. They run when Numba imports (it is a
dependency, but a NumPy it does not support yet makes it fail to import) and the environment
variable ``CNNKIT_JIT`` is not ``0``. Each kernel compiles on first use and is cached on disk
(``NUMBA_CACHE_DIR`` moves that cache), so only the first run of a new install waits for it.
"""

from __future__ import annotations

import os

ENV_JIT = "CNNKIT_JIT"

try:
    import numba
except ImportError:  # pragma: no cover - depends on the installation
    numba = None


def enabled() -> bool:
    """True when compiled kernels run: Numba imports and ``CNNKIT_JIT`` is not ``0``."""
    return numba is not None and os.environ.get(ENV_JIT, "1") != "0"


def kernel(function):
    """Compile ``function`` as a single-threaded kernel that releases the GIL (identity without Numba)."""
    if numba is None:
        return function
    return numba.njit(nogil=True, cache=True, fastmath={"contract"})(function)


def inline(function):
    """Compile ``function`` as a helper that Numba inlines into the kernels calling it."""
    if numba is None:
        return function
    return numba.njit(inline="always", fastmath={"contract"})(function)
