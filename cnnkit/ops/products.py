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

from . import tuning
from .parts import in_ranges
from .threads import num_threads


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N), into ``out`` (M, N) if given."""
    (m, k), n = a.shape, b.shape[1]
    parts = num_threads()
    if parts < 2 or m * k * n < tuning.MIN_PARALLEL_MACS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    if m >= parts * tuning.MIN_PART:
        in_ranges(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), m, parts)
    elif n >= parts * tuning.MIN_PART:
        in_ranges(lambda lo, hi: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]), n, parts)
    elif k >= parts * tuning.MIN_PART:
        partials = in_ranges(lambda lo, hi: np.matmul(a[:, lo:hi], b[lo:hi]), k, parts)
        np.copyto(out, partials[0])
        for partial in partials[1:]:
            out += partial
    else:
        np.matmul(a, b, out=out)
    return out
