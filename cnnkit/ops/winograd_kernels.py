"""Compiled (Numba) tile transforms of Winograd F(4x4, 3x3), the memory-bound part of the algorithm.

In pure NumPy each transform is a gather copy, a dense 36 x 36 matrix product and a scatter
copy. Here a block of tiles goes through three short passes that stay in a core's cache:

1. a *gather* copies each 6 x 6 input tile (padding read as zeros, never materialised) into
   a position-major buffer ``(36, tiles, C)``, row ``6*i + j`` holding tile position (i, j);
2. a *column pass* applies the 1-D transform down the columns (rows ``6*i + j`` for i = 0..5),
3. a *row pass* applies it along the rows.

Each pass is a loop over a long contiguous line of ``tiles*C`` numbers doing a handful of
additions per number, which the compiler vectorises; that is what makes them fast (a loop over
one tile's few channels is not). The output transform and both adjoints (for backward) are the
same passes with other 1-D transforms, and a *scatter* writes or adds tiles back.

A block's tiles: ``band_rows`` rows of ``tw`` tiles, from tile row ``first_row``, in each of its
images from ``first_image`` on. Tile ``t`` is tile (ti, tj) of image
``first_image + t // (band_rows*tw)`` and reads input rows from ``4*ti - top`` and columns from
``4*tj - left`` (``top``/``left``: the padding).

Kernels are single-threaded and release the GIL; :mod:`cnnkit.ops.threads` runs blocks in parallel.
"""

from __future__ import annotations

import numpy as np

from .jit import inline, kernel

# float32 constants: Numba would promote float32 data to float64 on a Python int; float32 times
# float64 data stays float64, and these small integers are exact in both.
_2, _4, _5, _8 = (np.float32(k) for k in (2, 4, 5, 8))


@inline
def _bt(d0, d1, d2, d3, d4, d5):
    """``B^T d`` for 6 numbers."""
    return (_4 * d0 - _5 * d2 + d4, -_4 * d1 - _4 * d2 + d3 + d4, _4 * d1 - _4 * d2 - d3 + d4,
            -_2 * d1 - d2 + _2 * d3 + d4, _2 * d1 - d2 - _2 * d3 + d4, _4 * d1 - _5 * d3 + d5)


@inline
def _bt_adjoint(v0, v1, v2, v3, v4, v5):
    """``B v`` (the adjoint of :func:`_bt`) for 6 numbers."""
    return (_4 * v0, -_4 * v1 + _4 * v2 - _2 * v3 + _2 * v4 + _4 * v5, -_5 * v0 - _4 * v1 - _4 * v2 - v3 - v4,
            v1 - v2 + _2 * v3 - _2 * v4 - _5 * v5, v0 + v1 + v2 + v3 + v4, v5)


@inline
def _at(m0, m1, m2, m3, m4, m5):
    """``A^T m``: 6 numbers to 4."""
    return (m0 + m1 + m2 + m3 + m4, m1 - m2 + _2 * m3 - _2 * m4, m1 + m2 + _4 * m3 + _4 * m4,
            m1 - m2 + _8 * m3 - _8 * m4 + m5)


@inline
def _at_adjoint(g0, g1, g2, g3):
    """``A g`` (the adjoint of :func:`_at`): 4 numbers to 6."""
    return (g0, g0 + g1 + g2 + g3, g0 - g1 + g2 - g3, g0 + _2 * g1 + _4 * g2 + _8 * g3,
            g0 - _2 * g1 + _4 * g2 - _8 * g3, g3)


# ------------------------------------------------------------------ passes over (positions, n) buffers
# Line l reads rows ``l*in_step + m*in_stride`` and writes rows ``l*out_step + m*out_stride``.

@kernel
def bt_lines(src, dst, lines, in_step, in_stride, out_step, out_stride, adjoint):
    """Apply :func:`_bt` (or, with ``adjoint``, :func:`_bt_adjoint`), 6 -> 6, along ``lines`` lines."""
    for line in range(lines):
        a, o = line * in_step, line * out_step
        s0, s1, s2 = src[a], src[a + in_stride], src[a + 2 * in_stride]
        s3, s4, s5 = src[a + 3 * in_stride], src[a + 4 * in_stride], src[a + 5 * in_stride]
        d0, d1, d2 = dst[o], dst[o + out_stride], dst[o + 2 * out_stride]
        d3, d4, d5 = dst[o + 3 * out_stride], dst[o + 4 * out_stride], dst[o + 5 * out_stride]
        for e in range(src.shape[1]):
            if adjoint:   # loop-invariant: the compiler moves the test out of the loop
                r = _bt_adjoint(s0[e], s1[e], s2[e], s3[e], s4[e], s5[e])
            else:
                r = _bt(s0[e], s1[e], s2[e], s3[e], s4[e], s5[e])
            d0[e], d1[e], d2[e], d3[e], d4[e], d5[e] = r[0], r[1], r[2], r[3], r[4], r[5]


@kernel
def at_lines(src, dst, lines, in_step, in_stride, out_step, out_stride):
    """Apply :func:`_at` (6 -> 4) along ``lines`` lines."""
    for line in range(lines):
        a, o = line * in_step, line * out_step
        s0, s1, s2 = src[a], src[a + in_stride], src[a + 2 * in_stride]
        s3, s4, s5 = src[a + 3 * in_stride], src[a + 4 * in_stride], src[a + 5 * in_stride]
        d0, d1, d2, d3 = dst[o], dst[o + out_stride], dst[o + 2 * out_stride], dst[o + 3 * out_stride]
        for e in range(src.shape[1]):
            r = _at(s0[e], s1[e], s2[e], s3[e], s4[e], s5[e])
            d0[e], d1[e], d2[e], d3[e] = r[0], r[1], r[2], r[3]


@kernel
def at_adjoint_lines(src, dst, lines, in_step, in_stride, out_step, out_stride):
    """Apply :func:`_at_adjoint` (4 -> 6) along ``lines`` lines."""
    for line in range(lines):
        a, o = line * in_step, line * out_step
        s0, s1, s2, s3 = src[a], src[a + in_stride], src[a + 2 * in_stride], src[a + 3 * in_stride]
        d0, d1, d2 = dst[o], dst[o + out_stride], dst[o + 2 * out_stride]
        d3, d4, d5 = dst[o + 3 * out_stride], dst[o + 4 * out_stride], dst[o + 5 * out_stride]
        for e in range(src.shape[1]):
            r = _at_adjoint(s0[e], s1[e], s2[e], s3[e])
            d0[e], d1[e], d2[e], d3[e], d4[e], d5[e] = r[0], r[1], r[2], r[3], r[4], r[5]


# ------------------------------------------------------------------ gathers and scatters of tiles

@inline
def _tile_origin(t, first_image, first_row, band_rows, tw):
    """``(b, row, column)``: the image of a block's tile ``t`` and its output tile's top-left pixel."""
    per_image = band_rows * tw
    return first_image + t // per_image, (first_row + (t % per_image) // tw) * 4, (t % per_image) % tw * 4


@kernel
def gather_input_tiles(x, top, left, first_image, first_row, band_rows, tw, d):
    """``d[6*i + j, t, :] = x`` at position (i, j) of input tile ``t`` (zero outside ``x``)."""
    _, h, w, c = x.shape
    for t in range(d.shape[1]):
        b, y0, x0 = _tile_origin(t, first_image, first_row, band_rows, tw)
        y0, x0 = y0 - top, x0 - left
        for i in range(6):
            for j in range(6):
                if 0 <= y0 + i < h and 0 <= x0 + j < w:
                    for k in range(c):
                        d[6 * i + j, t, k] = x[b, y0 + i, x0 + j, k]
                else:
                    for k in range(c):
                        d[6 * i + j, t, k] = 0


@kernel
def add_input_tiles(dd, top, left, first_image, first_row, band_rows, tw, dx):
    """``dx += dd`` tile by tile, the adjoint of :func:`gather_input_tiles`.

    Neighbouring tiles overlap by two rows or columns, so blocks that share an image edge must
    not run at the same time (the caller runs them in two waves).
    """
    _, h, w, c = dx.shape
    for t in range(dd.shape[1]):
        b, y0, x0 = _tile_origin(t, first_image, first_row, band_rows, tw)
        y0, x0 = y0 - top, x0 - left
        for i in range(6):
            for j in range(6):
                if 0 <= y0 + i < h and 0 <= x0 + j < w:
                    for k in range(c):
                        dx[b, y0 + i, x0 + j, k] += dd[6 * i + j, t, k]


@kernel
def scatter_output_tiles(o, bias, relu, first_image, first_row, band_rows, tw, y):
    """``y = o + bias`` (then ``max(., 0)`` when ``relu``) at position (i, j) of output tile ``t``
    from row ``4*i + j`` of ``o`` (16, tiles, N); the overhang past ``y``'s edge is dropped."""
    _, out_h, out_w, n = y.shape
    for t in range(o.shape[1]):
        b, y0, x0 = _tile_origin(t, first_image, first_row, band_rows, tw)
        for i in range(min(4, out_h - y0)):
            for j in range(min(4, out_w - x0)):
                if relu:
                    for k in range(n):
                        value = o[4 * i + j, t, k] + bias[k]
                        y[b, y0 + i, x0 + j, k] = 0 if value < 0 else value
                else:
                    for k in range(n):
                        y[b, y0 + i, x0 + j, k] = o[4 * i + j, t, k] + bias[k]


@kernel
def gather_output_tiles(dy, mask, first_image, first_row, band_rows, tw, g, dbias):
    """``g[4*i + j, t, :] = dy`` at position (i, j) of output tile ``t`` (zero past the edge),
    the adjoint of :func:`scatter_output_tiles`; its bias part, the sum of ``dy`` over the
    block's pixels, is added into ``dbias``. With a fused ReLU, ``mask`` is its output ``y``
    and ``dy`` counts only where ``y > 0``; otherwise ``mask`` is any array with no pixels."""
    _, out_h, out_w, n = dy.shape
    masked = mask.size > 0
    for t in range(g.shape[1]):
        b, y0, x0 = _tile_origin(t, first_image, first_row, band_rows, tw)
        for i in range(4):
            for j in range(4):
                if y0 + i < out_h and x0 + j < out_w:
                    if masked:
                        for k in range(n):
                            value = dy[b, y0 + i, x0 + j, k] if mask[b, y0 + i, x0 + j, k] > 0 else 0
                            g[4 * i + j, t, k] = value
                            dbias[k] += value
                    else:
                        for k in range(n):
                            value = dy[b, y0 + i, x0 + j, k]
                            g[4 * i + j, t, k] = value
                            dbias[k] += value
                else:
                    for k in range(n):
                        g[4 * i + j, t, k] = 0
