"""The GEMM convolution with compiled im2col (:mod:`cnnkit.ops.gemm_kernels`), block by block.

The same computation as the NumPy path of :mod:`cnnkit.ops.conv`, ordered for the cache: each
worker of the pool takes its share of output rows in blocks of about
:data:`BLOCK_ELEMENTS` column numbers, fills a block's columns and multiplies them at once,
so the columns never travel to memory. The columns carry a last column of ones: forward, the
bias is the last row of the weight matrix and rides along in the product; backward, ``dbias``
is the last row of the ``dweight`` product.

A layer with too few output rows to share (a large layer at batch 1) fills all its columns
in one block instead and splits the product itself over the pool
(:func:`cnnkit.ops.products.matmul`).
"""

from __future__ import annotations

import numpy as np

from . import gemm_kernels
from .activation import relu as relu_op
from .activation import relu_backward
from .products import matmul
from .reduce import sum_rows
from .threads import num_threads, run_parallel
from .window import Windows, output_hw, padded_shape

#: Column numbers in one block: a block and its product stay in a core's 2 MiB L2 cache.
BLOCK_ELEMENTS = 1 << 17
#: Fewer rows than this make the product too small for BLAS, whatever the column width.
MIN_BLOCK_ROWS = 256


class _Columns:
    """The im2col geometry of one convolution and its blocks of output rows."""

    def __init__(self, x: np.ndarray, weight_shape: tuple[int, ...], windows: Windows, ones: bool):
        self.x = np.ascontiguousarray(x)
        kh, kw, c, _ = weight_shape
        self.out_hw = output_hw(padded_shape(x.shape, windows)[1:3], windows)
        self.per_image = self.out_hw[0] * self.out_hw[1]
        self.rows = x.shape[0] * self.per_image
        self.width = kh * kw * c + int(ones)
        wh, ww = windows
        self.geometry = (kh, kw, wh.stride, ww.stride, wh.pad_before, ww.pad_before, wh.dilation, ww.dilation,
                         *self.out_hw)
        self.block_rows = max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // self.width)
        self._im2col = gemm_kernels.im2col_for(kh, kw, c)

    def shared(self) -> bool:
        """Enough rows for every worker to have at least one whole block."""
        return self.rows >= num_threads() * self.block_rows

    def blocks(self, first: int, stop: int, rows: int | None = None):
        """Consecutive row slices of ``first..stop``, ``rows`` (default: a block) at a time."""
        step = rows or self.block_rows
        for start in range(first, stop, step):
            yield slice(start, min(start + step, stop))

    def fill(self, rows: slice, buffer: np.ndarray | None = None) -> np.ndarray:
        """The columns of ``rows`` (in ``buffer`` when given, which must be large enough)."""
        count = rows.stop - rows.start
        cols = np.empty((count, self.width), self.x.dtype) if buffer is None else buffer[:count]
        self._im2col(self.x, *self.geometry, rows.start, cols)
        return cols

    def buffer(self) -> np.ndarray:
        return np.empty((self.block_rows, self.width), self.x.dtype)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, windows: Windows,
           relu: bool = False) -> np.ndarray:
    """``(B, Ho, Wo, N)`` convolution of ``x`` (B, H, W, C) by ``weight`` (Kh, Kw, C, N) plus ``bias``,
    followed by ReLU when ``relu``."""
    kh, kw, c, n = weight.shape
    w2 = weight.reshape(kh * kw * c, n)
    if bias is not None:
        w2 = np.concatenate([w2, bias[None]])
    columns = _Columns(x, weight.shape, windows, ones=bias is not None)
    y = np.empty((columns.rows, n), dtype=x.dtype)
    if columns.shared():
        parts = num_threads()

        def work(part: int) -> None:
            buffer = columns.buffer()
            for rows in columns.blocks(*_share(columns.rows, part, parts)):
                np.matmul(columns.fill(rows, buffer), w2, out=y[rows])
                if relu:   # while the block is in cache
                    relu_op(y[rows], out=y[rows])
        run_parallel(work, parts)
    else:
        matmul(columns.fill(slice(0, columns.rows)), w2, out=y)
        if relu:
            relu_op(y, out=y)
    return y.reshape(x.shape[0], *columns.out_hw, n)


def conv2d_backward(dy2: np.ndarray, x: np.ndarray, weight: np.ndarray, windows: Windows,
                    need_input_grad: bool = True, need_weight_grad: bool = True, mask: np.ndarray | None = None):
    """``(dx, dweight, dbias)`` of :func:`conv2d` from ``dy2``, the output gradient as (rows, N).

    ``mask`` is the output of a fused ReLU as (rows, N): ``dy2`` counts only where it is positive,
    applied block by block as the gradient is read."""
    kh, kw, c, n = weight.shape
    if mask is not None and not need_weight_grad:   # dbias is then summed from the whole gradient
        dy2, mask = relu_backward(dy2, mask), None
    columns = _Columns(x, weight.shape, windows, ones=True)
    w2t = weight.reshape(kh * kw * c, n).T
    dx = np.zeros(x.shape, dtype=x.dtype) if need_input_grad else None
    batch = x.shape[0]
    # workers take whole images: the windows of one image overlap in dx, those of two do not
    parts = min(num_threads(), batch) if columns.shared() else 1

    def work(part: int):
        first, stop = (columns.per_image * image for image in _share(batch, part, parts))
        product = np.zeros((columns.width, n), dtype=x.dtype) if need_weight_grad else None
        buffer = columns.buffer() if parts > 1 else None
        multiply = np.matmul if parts > 1 else matmul
        for rows in columns.blocks(first, stop, None if parts > 1 else stop - first):
            grad = dy2[rows] if mask is None else relu_backward(dy2[rows], mask[rows])
            if need_weight_grad:
                product += multiply(columns.fill(rows, buffer).T, grad)
            if need_input_grad:
                gemm_kernels.col2im_add(multiply(grad, w2t), *columns.geometry, rows.start, dx)
        return product

    partials = run_parallel(work, parts)
    if not need_weight_grad:
        return dx, None, sum_rows(dy2)
    total = partials[0]
    for partial in partials[1:]:   # in part order: the result does not depend on timing
        total += partial
    return dx, total[:-1].reshape(weight.shape), total[-1].copy()


def _share(total: int, part: int, parts: int) -> tuple[int, int]:
    """The ``part``-th of ``parts`` nearly equal consecutive ranges of ``range(total)``."""
    return total * part // parts, total * (part + 1) // parts
