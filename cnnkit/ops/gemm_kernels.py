"""Compiled (Numba) im2col and its adjoint, for the GEMM convolution path.

NumPy copies the windowed view ``(B, Ho, Wo, Kh, Kw, C)`` with its innermost loop over the C
channels, which for an RGB input is three numbers per call. These kernels copy the same rows
(one per output position, ``Kh*Kw*C`` numbers in tap-major, channel-minor order) with padding
read as zeros, so the padded copy of the input is never made. The windows are
``(kernel, stride, pad_before, dilation)`` per axis, unpacked into integers; rows are counted
over the whole batch, ``row = (b*Ho + i)*Wo + j``.

A small window (an image's first layer: 3x3 taps of 3 channels) copies 27 numbers a row in
loops of three, and there the loops' own overhead is most of the time. :func:`im2col_for`
then compiles the same loops with the window's size as constants, which the compiler unrolls
(measured 3x faster on 3x3x3 windows).
"""

from __future__ import annotations

import functools

from . import tuning
from .jit import inline, kernel


@inline
def _window_origin(row, sh, sw, top, left, out_h, out_w):
    """``(b, y0, x0)``: the image and the input position of the top-left tap of output ``row``."""
    b, rest = row // (out_h * out_w), row % (out_h * out_w)
    return b, (rest // out_w) * sh - top, (rest % out_w) * sw - left


@inline
def _im2col_rows(x, kh, kw, c, sh, sw, top, left, dh, dw, out_h, out_w, first_row, cols):
    """The body of :func:`im2col`; ``kh, kw, c`` are constants in a kernel of :func:`im2col_for`."""
    h, w = x.shape[1], x.shape[2]
    width = kh * kw * c
    for r in range(cols.shape[0]):
        b, y0, x0 = _window_origin(first_row + r, sh, sw, top, left, out_h, out_w)
        for p in range(kh):
            for q in range(kw):
                start = (p * kw + q) * c
                yy, xx = y0 + p * dh, x0 + q * dw
                if 0 <= yy < h and 0 <= xx < w:
                    for k in range(c):
                        cols[r, start + k] = x[b, yy, xx, k]
                else:
                    for k in range(c):
                        cols[r, start + k] = 0
        if cols.shape[1] > width:
            cols[r, width] = 1


@kernel
def im2col(x, kh, kw, sh, sw, top, left, dh, dw, out_h, out_w, first_row, cols):
    """``cols[r] = window of output row first_row + r``; a spare last column, if any, is set to 1
    (it multiplies the bias row of an augmented weight)."""
    _im2col_rows(x, kh, kw, x.shape[3], sh, sw, top, left, dh, dw, out_h, out_w, first_row, cols)


def im2col_for(kh: int, kw: int, c: int):
    """:func:`im2col`, compiled for ``kh x kw`` windows of ``c`` channels when that window is
    small (at most :data:`~cnnkit.ops.tuning.MAX_UNROLLED_WINDOW` numbers); the same arguments either way."""
    if kh * kw * c > tuning.MAX_UNROLLED_WINDOW:
        return im2col
    return _unrolled_im2col(kh, kw, c)


@functools.lru_cache(maxsize=None)
def _unrolled_im2col(kh: int, kw: int, c: int):
    # the closure's kh, kw and c are compile-time constants for Numba (cached on disk per value)
    @kernel
    def unrolled(x, _kh, _kw, sh, sw, top, left, dh, dw, out_h, out_w, first_row, cols):
        _im2col_rows(x, kh, kw, c, sh, sw, top, left, dh, dw, out_h, out_w, first_row, cols)
    return unrolled


@kernel
def col2im_add(dcols, kh, kw, sh, sw, top, left, dh, dw, out_h, out_w, first_row, dx):
    """``dx += `` each row of ``dcols`` added back where :func:`im2col` read it (the adjoint).

    Overlapping windows add into the same pixels: concurrent calls must cover disjoint images.
    """
    _, h, w, c = dx.shape
    for r in range(dcols.shape[0]):
        b, y0, x0 = _window_origin(first_row + r, sh, sw, top, left, out_h, out_w)
        for p in range(kh):
            for q in range(kw):
                start = (p * kw + q) * c
                yy, xx = y0 + p * dh, x0 + q * dw
                if 0 <= yy < h and 0 <= xx < w:
                    for k in range(c):
                        dx[b, yy, xx, k] += dcols[r, start + k]
