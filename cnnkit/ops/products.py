"""Matrix products split over cnnkit's worker pool, each part a one-thread BLAS call.

cnnkit holds NumPy's BLAS to one thread while it computes (see :mod:`cnnkit.ops.threads`):
OpenBLAS's own helper threads keep spinning for a while after each multi-threaded call, and
would take the cores from the worker pool's next step. Large products are split here instead,
in the way that keeps every part a large product of its own: by rows of ``a`` for tall
products (a batch of images), by columns of ``b`` for wide ones (a fully connected layer at
batch 1), and otherwise along the summed dimension, adding the partial products in a fixed
order so that results do not depend on timing.
"""

from __future__ import annotations

import numpy as np

from .threads import num_threads, run_parallel

#: Below this many multiply-adds, one call is faster than waking the pool.
MIN_PARALLEL_MACS = 1 << 21
#: A split keeps at least this many rows or columns per part.
MIN_PART = 32


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N), into ``out`` (M, N) if given."""
    (m, k), n = a.shape, b.shape[1]
    parts = num_threads()
    if parts < 2 or m * k * n < MIN_PARALLEL_MACS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    if m >= parts * MIN_PART:
        _split(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), m, parts)
    elif n >= parts * MIN_PART:
        _split(lambda lo, hi: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]), n, parts)
    elif k >= parts * MIN_PART:
        partials = _split(lambda lo, hi: np.matmul(a[:, lo:hi], b[lo:hi]), k, parts)
        np.copyto(out, partials[0])
        for partial in partials[1:]:
            out += partial
    else:
        np.matmul(a, b, out=out)
    return out


def _split(product, size: int, parts: int) -> list:
    """``product(lo, hi)`` over ``parts`` consecutive ranges of ``range(size)``, on the pool."""
    return run_parallel(lambda part: product(size * part // parts, size * (part + 1) // parts), parts)
