"""The GEMM convolution with compiled im2col (:mod:`cnnkit.ops.gemm_kernels`), block by block.

The same computation as :func:`cnnkit.ops.gemm.gemm_conv2d` (its NumPy reference), ordered for
the cache: each worker of the pool takes its share of output rows in blocks of about
:data:`~cnnkit.ops.tuning.GEMM_BLOCK_ELEMENTS` column numbers, fills a block's columns and
multiplies them at once, so the columns never travel to memory. The columns carry a last
column of ones: forward, the bias is the last row of the weight matrix and rides along in the
product; backward, ``dbias`` is the last row of the ``dweight`` product.

A layer with too few output rows to share (a large layer at batch 1) fills all its columns
in one block instead and splits the product itself over the pool
(:func:`cnnkit.ops.products.matmul`).

The compiled ``gemm`` row of the table in :mod:`cnnkit.ops.conv`, used when :func:`cnnkit.ops.jit.enabled`.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry
from . import gemm_kernels, tuning
from .activation import relu as relu_op
from .activation import relu_backward
from .parts import in_ranges, part_count
from .products import matmul
from .reduce import sum_rows
from .threads import num_threads


class _Columns:
    """The im2col geometry of one convolution and its blocks of output rows."""

    def __init__(self, x: np.ndarray, weight_shape: tuple[int, ...], geometry: Geometry, ones: bool):
        self.x = np.ascontiguousarray(x)
        kh, kw, c, _ = weight_shape
        self.out_hw = geometry.output_hw(x.shape[1:3])
        self.per_image = self.out_hw[0] * self.out_hw[1]
        self.rows = x.shape[0] * self.per_image
        self.width = kh * kw * c + int(ones)
        self.args = (*geometry.kernel_args, *self.out_hw)   # as the im2col kernels take them
        self.block_rows = max(tuning.GEMM_MIN_BLOCK_ROWS, tuning.GEMM_BLOCK_ELEMENTS // self.width)
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
        self._im2col(self.x, *self.args, rows.start, cols)
        return cols

    def buffer(self) -> np.ndarray:
        return np.empty((self.block_rows, self.width), self.x.dtype)


def packed_weight(weight: np.ndarray, bias: np.ndarray | None, dtype) -> np.ndarray:
    """The matrix the forward multiplies the columns by: ``weight`` (Kh, Kw, C, N) as
    ``(Kh*Kw*C, N)`` in ``dtype``, with ``bias`` as one more last row when given (a copy of the
    weight then, which a caller that keeps it saves on every call)."""
    kh, kw, c, n = weight.shape
    w2 = weight.astype(dtype, copy=False).reshape(kh * kw * c, n)
    return w2 if bias is None else np.concatenate([w2, bias.astype(dtype, copy=False)[None]])


def compiled_gemm_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                         relu: bool = False, packed: np.ndarray | None = None) -> np.ndarray:
    """``(B, Ho, Wo, N)`` convolution of ``x`` (B, H, W, C) by ``weight`` (Kh, Kw, C, N) plus ``bias``
    (N,) or None, followed by ReLU when ``relu``; weight and bias are taken in the dtype of ``x``.
    ``packed``: :func:`packed_weight` of this weight and bias in that dtype, when the caller keeps it."""
    kh, kw, c, n = weight.shape
    w2 = packed_weight(weight, bias, x.dtype) if packed is None else packed
    columns = _Columns(x, weight.shape, geometry, ones=bias is not None)
    y = np.empty((columns.rows, n), dtype=x.dtype)
    if columns.shared():
        def work(first: int, stop: int) -> None:
            buffer = columns.buffer()
            for rows in columns.blocks(first, stop):
                np.matmul(columns.fill(rows, buffer), w2, out=y[rows])
                if relu:   # while the block is in cache
                    relu_op(y[rows], out=y[rows])
        in_ranges(work, columns.rows, num_threads())
    else:
        matmul(columns.fill(slice(0, columns.rows)), w2, out=y)
        if relu:
            relu_op(y, out=y)
    return y.reshape(x.shape[0], *columns.out_hw, n)


def compiled_gemm_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                                  need_input_grad: bool = True, need_weight_grad: bool = True,
                                  relu_output: np.ndarray | None = None):
    """``(dx, dweight, dbias)`` of :func:`compiled_gemm_conv2d` from ``dy`` (B, Ho, Wo, N); either of
    ``dx`` and ``dweight`` is None when not needed.

    ``relu_output`` is the output of a fused ReLU: ``dy`` counts only where it is positive,
    applied block by block as the gradient is read."""
    weight = weight.astype(x.dtype, copy=False)
    kh, kw, c, n = weight.shape
    dy2 = dy.astype(x.dtype, copy=False).reshape(-1, n)
    mask = None if relu_output is None else relu_output.reshape(-1, n)
    if mask is not None and not need_weight_grad:   # dbias is then summed from the whole gradient
        dy2, mask = relu_backward(dy2, mask), None
    columns = _Columns(x, weight.shape, geometry, ones=True)
    w2t = weight.reshape(kh * kw * c, n).T
    dx = np.zeros(x.shape, dtype=x.dtype) if need_input_grad else None
    batch = x.shape[0]
    # workers take whole images: the windows of one image overlap in dx, those of two do not
    parts = part_count(batch) if columns.shared() else 1

    def work(first_image: int, stop_image: int):
        first, stop = columns.per_image * first_image, columns.per_image * stop_image
        product = np.zeros((columns.width, n), dtype=x.dtype) if need_weight_grad else None
        buffer = columns.buffer() if parts > 1 else None
        multiply = np.matmul if parts > 1 else matmul
        for rows in columns.blocks(first, stop, None if parts > 1 else stop - first):
            grad = dy2[rows] if mask is None else relu_backward(dy2[rows], mask[rows])
            if need_weight_grad:
                product += multiply(columns.fill(rows, buffer).T, grad)
            if need_input_grad:
                gemm_kernels.col2im_add(multiply(grad, w2t), *columns.args, rows.start, dx)
        return product

    partials = in_ranges(work, batch, parts)
    if not need_weight_grad:
        return dx, None, sum_rows(dy2)
    total = partials[0]
    for partial in partials[1:]:   # in part order: the result does not depend on timing
        total += partial
    return dx, total[:-1].reshape(weight.shape), total[-1].copy()
