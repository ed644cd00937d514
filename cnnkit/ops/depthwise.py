"""Depthwise convolution: each input channel convolved with filters of its own, in NumPy.

A depthwise convolution is the grouped convolution with one input channel per group (groups ==
C): with ``M`` filters per channel (Keras's ``depth_multiplier``), output channel ``c*M + m`` is
input channel ``c`` convolved with ``weight[:, :, c, m]``::

    y[b, i, j, c*M + m] = sum_{p, q} padded[b, i*S_h + p*D_h, j*S_w + q*D_w, c] * weight[p, q, c, m] + bias[c*M + m]

Each output needs only ``Kh*Kw`` multiply-adds, too few for a matrix product, so the work runs as
``Kh*Kw`` vectorised multiply-adds over whole ``(B, Ho, Wo, C, M)`` blocks, one per kernel tap:
tap ``(p, q)`` reads the padded input through its strided slice
(:func:`~cnnkit.ops.window.tap_slices`) and adds it times ``weight[p, q]`` (C, M), every channel at
once. Backward is the same taps: the weight gradient of tap ``(p, q)`` sums ``slice * dy`` over
the block, and the input gradient adds ``dy * weight[p, q]`` into the tap's slice of the padded
input gradient (the scatter of :func:`~cnnkit.ops.window.window_add`, one tap at a time).

The batch is cut into blocks of output rows (:data:`~cnnkit.ops.tuning.DEPTHWISE_BLOCK_ELEMENTS`
numbers) so that a block's ``Kh*Kw`` passes stay in cache. The padded volume is never made: each
block copies the input rows it reads into a small padded buffer (:func:`~cnnkit.ops.window.pad_rows`),
and backward adds a block's padded input gradient back into the input's
(:func:`~cnnkit.ops.window.unpad_rows_add`). Blocks run on the worker pool, the backward's by
ranges of images (whose input gradients do not overlap), each part adding its own weight and bias
gradients, summed in part order. Weights here are ``(Kh, Kw, C, M)``, as Keras
stores a depthwise kernel; :mod:`cnnkit.ops.conv` calls these as the row ``"depthwise"`` with
the grouped layout ``(Kh, Kw, 1, C*M)`` reshaped.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry
from . import tuning
from .activation import relu as relu_op
from .activation import relu_backward
from .parts import deal, part_count, share
from .reduce import sum_rows
from .threads import run_parallel
from .window import input_rows, pad_rows, tap_slices, unpad_rows_add


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                     relu: bool = False) -> np.ndarray:
    """Convolve each channel of ``x`` (B, H, W, C) with its ``M`` filters ``weight`` (Kh, Kw, C, M),
    add ``bias`` (C*M,) or None, then apply ReLU when ``relu``.

    Returns ``(B, Ho, Wo, C*M)`` in the dtype of ``x``, output channel ``c*M + m`` from filter
    ``(c, m)``, with ``Ho = floor((H + P_before + P_after - D*(Kh - 1) - 1)/S) + 1`` (likewise Wo).
    """
    weight = weight.astype(x.dtype, copy=False)
    batch = x.shape[0]
    ho, wo = geometry.output_hw(x.shape[1:3])
    y = np.empty((batch, ho, wo, weight.shape[2] * weight.shape[3]), dtype=x.dtype)
    ys, ws, expand = _per_filter(y, weight)
    bias_s = None if bias is None else bias.astype(x.dtype, copy=False).reshape(ws.shape[2:])
    blocks = _blocks(0, batch, ho, y[0, 0].size)
    parts = part_count(len(blocks))

    def task(part: int) -> None:
        scratch = np.empty(_capacity(blocks, y[0, 0].size), dtype=x.dtype)
        padded = _RowBuffer(x, geometry, blocks)
        for images, lo, hi in deal(blocks, part, parts):
            out = ys[images, lo:hi]
            _forward_taps(out, padded.rows(images, lo, hi), ws, geometry, scratch, expand)
            if bias_s is not None:
                out += bias_s
            if relu:
                relu_op(out, out=out)

    run_parallel(task, parts)
    return y


def depthwise_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                              need_input_grad: bool = True, need_weight_grad: bool = True,
                              relu_output: np.ndarray | None = None
                              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`depthwise_conv2d` given ``dy`` (B, Ho, Wo, C*M).

    ``dx`` is None when ``need_input_grad`` is False, ``dweight`` (Kh, Kw, C, M) None when
    ``need_weight_grad`` is False. ``relu_output`` is the output of a fused ReLU: ``dy`` then
    counts only where it is positive.
    """
    weight = weight.astype(x.dtype, copy=False)
    batch, ho = dy.shape[:2]
    dys, ws, expand = _per_filter(dy.astype(x.dtype, copy=False), weight)
    masks = None if relu_output is None else _per_filter(relu_output, weight)[0]
    dx = np.zeros(x.shape, dtype=x.dtype) if need_input_grad else None
    per_row = dy[0, 0].size
    parts = part_count(batch)

    def task(part: int):
        blocks = _blocks(*share(batch, part, parts), ho, per_row)
        scratch, masked = np.empty((2, _capacity(blocks, per_row)), dtype=x.dtype)
        padded, padded_grad = _RowBuffer(x, geometry, blocks), _RowBuffer(x, geometry, blocks)
        dbias = np.zeros(per_row // dy.shape[2], dtype=x.dtype)
        dweight = np.zeros_like(ws) if need_weight_grad else None
        for images, lo, hi in blocks:   # in order: the input gradients of neighbouring blocks overlap
            grad = dys[images, lo:hi]
            if masks is not None:
                grad = relu_backward(grad, masks[images, lo:hi], out=masked[:grad.size].reshape(grad.shape))
            dbias += sum_rows(grad.reshape(-1, dbias.size))
            if dweight is not None:
                _weight_taps(dweight, padded.rows(images, lo, hi), grad, geometry, scratch, expand)
            if dx is not None:
                rows = input_rows(geometry, lo, hi)
                drows = padded_grad.zeros(images, rows)
                _input_taps(drows, grad, ws, geometry, scratch, expand)
                unpad_rows_add(dx[images], drows, geometry, rows)
        return dbias, dweight

    partials = run_parallel(task, parts)
    dbias = _in_order([dbias for dbias, _ in partials])
    dweight = _in_order([dweight for _, dweight in partials]).reshape(weight.shape) if need_weight_grad else None
    return dx, dweight, dbias


# ----------------------------------------------------------------- the taps of one block

def _forward_taps(out, xrows, ws, geometry, scratch, expand) -> None:
    """``out = sum over taps of slice * ws[p, q]``: the first tap written, the others added."""
    product = scratch[:out.size].reshape(out.shape)
    for index, (p, q, rows, cols) in enumerate(tap_slices(geometry, out.shape[1:3])):
        pixels = xrows[:, rows, cols, :, None] if expand else xrows[:, rows, cols]
        if index == 0:
            np.multiply(pixels, ws[p, q], out=out)
        else:
            np.multiply(pixels, ws[p, q], out=product)
            out += product


def _weight_taps(dweight, xrows, grad, geometry, scratch, expand) -> None:
    """Add each tap's ``sum(slice * grad)`` over the block's pixels into ``dweight[p, q]``."""
    product = scratch[:grad.size].reshape(grad.shape)
    per_pixel = dweight[0, 0].size
    for p, q, rows, cols in tap_slices(geometry, grad.shape[1:3]):
        pixels = xrows[:, rows, cols, :, None] if expand else xrows[:, rows, cols]
        np.multiply(pixels, grad, out=product)
        dweight[p, q] += sum_rows(product.reshape(-1, per_pixel)).reshape(dweight.shape[2:])


def _input_taps(dxrows, grad, ws, geometry, scratch, expand) -> None:
    """Add ``grad * ws[p, q]`` (summed over the M filters of a channel) into each tap's slice."""
    product = scratch[:grad.size].reshape(grad.shape)
    for p, q, rows, cols in tap_slices(geometry, grad.shape[1:3]):
        np.multiply(grad, ws[p, q], out=product)
        target = dxrows[:, rows, cols]
        np.add(target, product.sum(axis=-1) if expand else product, out=target)


# ----------------------------------------------------------------- layouts and blocks

def _per_filter(volume: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(volume, weight, expand)`` in the layout the taps use: with one filter per channel (M = 1,
    MobileNet's) the plain ``(..., C)`` volume and ``(Kh, Kw, C)`` weight, so that every pass runs
    over channels; with several, ``(..., C, M)`` and ``(Kh, Kw, C, M)``, the input broadcast over M
    (``expand``)."""
    c, m = weight.shape[2:]
    if m == 1:
        return volume, weight[..., 0], False
    return volume.reshape(*volume.shape[:-1], c, m), weight, True


class _RowBuffer:
    """One part's buffer for the padded input rows of its blocks (never the whole padded volume)."""

    def __init__(self, x: np.ndarray, geometry: Geometry, blocks) -> None:
        self.x, self.geometry = x, geometry
        _, _, w, c = geometry.padded_shape(x.shape)
        spans = (input_rows(geometry, lo, hi) for _, lo, hi in blocks)
        most = max((images.stop - images.start) * (rows.stop - rows.start)
                   for (images, _, _), rows in zip(blocks, spans))
        self.buffer = np.empty(most * w * c, dtype=x.dtype)
        self.row_shape = (w, c)

    def _view(self, images: slice, rows: slice) -> np.ndarray:
        shape = (images.stop - images.start, rows.stop - rows.start, *self.row_shape)
        return self.buffer[:int(np.prod(shape))].reshape(shape)

    def rows(self, images: slice, lo: int, hi: int) -> np.ndarray:
        """The padded input rows that output rows ``lo .. hi-1`` of ``images`` read."""
        rows = input_rows(self.geometry, lo, hi)
        return pad_rows(self.x[images], self.geometry, rows, self._view(images, rows))

    def zeros(self, images: slice, rows: slice) -> np.ndarray:
        """A zeroed gradient for padded input rows ``rows`` of ``images``."""
        view = self._view(images, rows)
        view.fill(0)
        return view


def _blocks(first: int, stop: int, out_rows: int, per_row: int) -> list[tuple[slice, int, int]]:
    """``(images, lo, hi)``: images ``first .. stop-1`` cut into blocks of output rows ``lo .. hi-1``
    of about ``DEPTHWISE_BLOCK_ELEMENTS`` numbers (``per_row`` a row), several small images a block."""
    rows = max(1, tuning.DEPTHWISE_BLOCK_ELEMENTS // per_row)
    if rows >= out_rows:
        step = rows // out_rows
        return [(slice(i, min(i + step, stop)), 0, out_rows) for i in range(first, stop, step)]
    return [(slice(i, i + 1), lo, min(lo + rows, out_rows)) for i in range(first, stop)
            for lo in range(0, out_rows, rows)]


def _capacity(blocks, per_row: int) -> int:
    """Numbers in the largest block."""
    return max((images.stop - images.start) * (hi - lo) for images, lo, hi in blocks) * per_row


def _in_order(partials: list[np.ndarray]) -> np.ndarray:
    """The sum of the parts' partial results, added in part order (the same result every run)."""
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total
