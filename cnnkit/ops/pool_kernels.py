"""Compiled (Numba) max pooling: one pass over the input instead of one NumPy pass per tap.

The same numbers as the NumPy path in :mod:`cnnkit.ops.pool` (its reference): padding counts
as minus infinity, ties go to the first tap, a NaN propagates, and ``winners`` holds the tap
index ``p*Kw + q`` of each maximum. Each kernel handles the images ``first .. stop`` so the
worker pool can split the batch; the windows are ``(kernel, stride, pad_before, dilation)``
per axis, unpacked into integers.
"""

from __future__ import annotations

import numpy as np

from .jit import kernel


@kernel
def max_pool(x, kh, kw, sh, sw, top, left, dh, dw, first, stop, y, winners, with_indices):
    """``y[b] = max over each window of x[b]`` (and the winning tap) for images ``first..stop``."""
    _, h, w, c = x.shape
    _, out_h, out_w, _ = y.shape
    best = np.empty(c, dtype=y.dtype)
    won = np.zeros(c, dtype=winners.dtype)
    for b in range(first, stop):
        for i in range(out_h):
            for j in range(out_w):
                for tap in range(kh * kw):
                    row = i * sh - top + (tap // kw) * dh
                    col = j * sw - left + (tap % kw) * dw
                    inside = 0 <= row < h and 0 <= col < w
                    if tap == 0:
                        for k in range(c):
                            best[k] = x[b, row, col, k] if inside else -np.inf
                            won[k] = 0
                    elif inside:
                        for k in range(c):
                            value = x[b, row, col, k]
                            if value > best[k]:
                                best[k] = value
                                won[k] = tap
                            elif value != value:
                                best[k] = value
                for k in range(c):
                    y[b, i, j, k] = best[k]
                if with_indices:
                    for k in range(c):
                        winners[b, i, j, k] = won[k]


@kernel
def max_pool_backward(dy, winners, kh, kw, sh, sw, top, left, dh, dw, first, stop, tiled, dx):
    """``dx[b] += dy`` routed to each window's winning pixel, for images ``first..stop``.

    ``tiled``: the windows cut the input into disjoint tiles that cover it, so every pixel of
    ``dx`` is written once (it may come uninitialised); otherwise ``dx`` must come zeroed.
    """
    _, h, w, c = dx.shape
    _, out_h, out_w, _ = dy.shape
    for b in range(first, stop):
        for i in range(out_h):
            for j in range(out_w):
                if tiled:
                    for tap in range(kh * kw):
                        row = i * sh + tap // kw
                        col = j * sw + tap % kw
                        for k in range(c):
                            dx[b, row, col, k] = dy[b, i, j, k] if winners[b, i, j, k] == tap else 0
                    continue
                for k in range(c):
                    tap = winners[b, i, j, k]
                    row = i * sh - top + (tap // kw) * dh
                    col = j * sw - left + (tap % kw) * dw
                    if 0 <= row < h and 0 <= col < w:
                        dx[b, row, col, k] += dy[b, i, j, k]
