"""2-D convolution (cross-correlation, as in every framework) as one matrix product, in NumPy.

Channels-last makes each window of the padded input a row of ``Kh*Kw*C`` numbers in the
same order as the weight ``(Kh, Kw, C, N)`` reshaped to ``(Kh*Kw*C, N)``, so::

    y[b, i, j, :] = cols[b*Ho*Wo + i*Wo + j, :] @ weight.reshape(Kh*Kw*C, N) + bias

with ``cols`` the windowed view of the padded input flattened to ``(B*Ho*Wo, Kh*Kw*C)``
(im2col). The flattening copies, so it is done a few images at a time into one reused
buffer (:data:`~cnnkit.ops.tuning.GEMM_CHUNK_ELEMENTS` numbers). Backward is the same product
transposed: ``dweight = cols^T @ dy``, ``dbias = sum(dy)``, and ``dcols = dy @ weight^T``
scattered back with :func:`window_add`.

A 1x1 stride-1 unpadded convolution is already a matrix product over the pixels:
:func:`pointwise_conv2d` copies no window.

A grouped convolution (``groups = g``: input channels and filters cut into ``g`` groups, filter
group ``k`` reading input group ``k`` only; the weight ``(Kh, Kw, C/g, N)``) is ``g`` such products
at once, one batched :func:`numpy.matmul` per chunk: the columns ``(g, rows, Kh*Kw*C/g)`` times the
weight as ``(g, Kh*Kw*C/g, N/g)`` (:func:`grouped_conv2d`), output channel ``n`` in group
``n // (N/g)``, as PyTorch and Keras count them. These are rows of the table in
:mod:`cnnkit.ops.conv` (which callers go through); :func:`gemm_conv2d` is also the NumPy
reference of the compiled :mod:`cnnkit.ops.gemm_fast`.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry
from . import tuning
from .activation import relu as relu_op
from .activation import relu_backward
from .products import matmul
from .reduce import sum_rows
from .window import pad, unpad, window_add, windowed_view


def pointwise_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                     relu: bool = False) -> np.ndarray:
    """A 1x1 stride-1 unpadded convolution of ``x`` (B, H, W, C) by ``weight`` (1, 1, C, N): one
    product ``(B*H*W, C) @ (C, N)``, plus ``bias`` (N,) or None, then ReLU when ``relu``."""
    weight = weight.astype(x.dtype, copy=False)
    c, n = weight.shape[2:]
    y = matmul(x.reshape(-1, c), weight.reshape(c, n)).reshape(*x.shape[:3], n)
    return _finish(y, bias, relu)


def pointwise_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                              need_input_grad: bool = True, need_weight_grad: bool = True,
                              relu_output: np.ndarray | None = None):
    """``(dx, dweight, dbias)`` of :func:`pointwise_conv2d` (see :func:`gemm_conv2d_backward`)."""
    weight = weight.astype(x.dtype, copy=False)
    c, n = weight.shape[2:]
    dy2 = _output_grad(dy, x, n, relu_output)
    dbias = sum_rows(dy2)
    dweight = matmul(x.reshape(-1, c).T, dy2).reshape(weight.shape) if need_weight_grad else None
    dx = matmul(dy2, weight.reshape(c, n).T).reshape(x.shape) if need_input_grad else None
    return dx, dweight, dbias


def gemm_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                relu: bool = False) -> np.ndarray:
    """Convolve ``x`` (B, H, W, C) with ``weight`` (Kh, Kw, C, N) and add ``bias`` (N,) or None;
    then apply ReLU when ``relu``.

    Returns ``(B, Ho, Wo, N)`` in the dtype of ``x`` with
    ``Ho = floor((H + P_before + P_after - D*(Kh - 1) - 1)/S) + 1`` (likewise Wo).
    """
    weight = weight.astype(x.dtype, copy=False)
    kh, kw, c, n = weight.shape
    view = windowed_view(pad(x, geometry), geometry)
    b, ho, wo = view.shape[:3]
    y = np.empty((b, ho, wo, n), dtype=x.dtype)
    y2 = y.reshape(-1, n)
    w2 = weight.reshape(kh * kw * c, n)
    for rows, cols in _im2col_chunks(view):
        np.matmul(cols, w2, out=y2[rows])
    return _finish(y, bias, relu)


def gemm_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                         need_input_grad: bool = True, need_weight_grad: bool = True,
                         relu_output: np.ndarray | None = None
                         ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`gemm_conv2d` given ``dy`` (B, Ho, Wo, N).

    ``dx`` is None when ``need_input_grad`` is False (a first layer), ``dweight`` is None when
    ``need_weight_grad`` is False (a frozen layer), which skips a third of the work each.
    ``relu_output`` is the output of a fused ReLU (``relu=True``): ``dy`` then counts only
    where it is positive.
    """
    weight = weight.astype(x.dtype, copy=False)
    kh, kw, c, n = weight.shape
    dy2 = _output_grad(dy, x, n, relu_output)
    dbias = sum_rows(dy2)
    w2 = weight.reshape(kh * kw * c, n)
    view = windowed_view(pad(x, geometry), geometry)
    dweight = np.zeros_like(w2) if need_weight_grad else None
    dxp = np.zeros(geometry.padded_shape(x.shape), dtype=x.dtype) if need_input_grad else None
    if need_weight_grad or need_input_grad:
        _backward_chunks(dy2, view, w2, dweight, dxp, geometry)
    dx = unpad(dxp, geometry) if need_input_grad else None
    return dx, (dweight.reshape(weight.shape) if need_weight_grad else None), dbias


def grouped_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                   relu: bool = False) -> np.ndarray:
    """Grouped convolution of ``x`` (B, H, W, C) by ``weight`` (Kh, Kw, C/g, N), ``g = C / weight.shape[2]``
    groups, plus ``bias`` (N,) or None, then ReLU when ``relu``; ``(B, Ho, Wo, N)`` as :func:`gemm_conv2d`.

    With ``g = 1`` it computes what :func:`gemm_conv2d` does (more slowly: the output is copied
    from the batched product's layout)."""
    weight = weight.astype(x.dtype, copy=False)
    groups = x.shape[-1] // weight.shape[2]
    n = weight.shape[3]
    w3 = _group_weights(weight, groups)
    view = windowed_view(pad(x, geometry), geometry)
    y = np.empty((*view.shape[:3], n), dtype=x.dtype)
    y3 = y.reshape(-1, groups, n // groups)
    for rows, cols in _grouped_chunks(view, groups):
        np.copyto(y3[rows], np.matmul(cols, w3).transpose(1, 0, 2))
    return _finish(y, bias, relu)


def grouped_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                            need_input_grad: bool = True, need_weight_grad: bool = True,
                            relu_output: np.ndarray | None = None
                            ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`grouped_conv2d` (see :func:`gemm_conv2d_backward`):
    per group ``dweight = cols^T @ dy`` and ``dcols = dy @ weight^T``, batched over the groups."""
    weight = weight.astype(x.dtype, copy=False)
    kh, kw, cg, n = weight.shape
    groups = x.shape[-1] // cg
    dy2 = _output_grad(dy, x, n, relu_output)
    dbias = sum_rows(dy2)
    w3 = _group_weights(weight, groups)
    view = windowed_view(pad(x, geometry), geometry)
    dw3 = np.zeros_like(w3) if need_weight_grad else None
    dxp = np.zeros(geometry.padded_shape(x.shape), dtype=x.dtype) if need_input_grad else None
    if need_weight_grad or need_input_grad:
        per_image = int(np.prod(view.shape[1:3]))
        for rows, cols in _grouped_chunks(view, groups):
            dy3 = dy2[rows].reshape(-1, groups, n // groups).transpose(1, 0, 2)   # (g, rows, N/g)
            if need_weight_grad:
                dw3 += np.matmul(cols.transpose(0, 2, 1), dy3)
            if need_input_grad:
                images = slice(rows.start // per_image, rows.stop // per_image)
                dcols = np.matmul(dy3, w3.transpose(0, 2, 1))                      # (g, rows, Kh*Kw*C/g)
                window_add(dxp[images], _ungrouped(dcols, view[images].shape, groups), geometry)
    dweight = dw3.transpose(1, 0, 2).reshape(weight.shape) if need_weight_grad else None
    return (unpad(dxp, geometry) if need_input_grad else None), dweight, dbias


def _group_weights(weight: np.ndarray, groups: int) -> np.ndarray:
    """``(Kh, Kw, C/g, N)`` as the ``(g, Kh*Kw*C/g, N/g)`` stack of each group's matrix (a copy)."""
    kh, kw, cg, n = weight.shape
    return np.ascontiguousarray(weight.reshape(kh * kw * cg, groups, n // groups).transpose(1, 0, 2))


def _grouped_chunks(view: np.ndarray, groups: int):
    """Yield ``(rows, cols)`` as :func:`_im2col_chunks`, the columns ``(g, rows, Kh*Kw*C/g)``: each
    group's windows in the order of its weight matrix (a reused buffer, valid until the next one)."""
    b, ho, wo, kh, kw, c = view.shape
    by_group = view.reshape(b, ho, wo, kh, kw, groups, c // groups).transpose(5, 0, 1, 2, 3, 4, 6)
    buffer = None
    for rows, images in _chunk_ranges(view):
        count = rows.stop - rows.start
        if buffer is None:
            buffer = np.empty(groups * count * kh * kw * (c // groups), dtype=view.dtype)
        cols = buffer[:groups * count * kh * kw * (c // groups)].reshape(groups, count, -1)
        np.copyto(cols.reshape(groups, images.stop - images.start, *by_group.shape[2:]), by_group[:, images])
        yield rows, cols


def _ungrouped(dcols: np.ndarray, window_shape: tuple[int, ...], groups: int) -> np.ndarray:
    """Window gradients ``(g, rows, Kh*Kw*C/g)`` in the windowed view's layout ``(B, Ho, Wo, Kh, Kw, C)``."""
    b, ho, wo, kh, kw, c = window_shape
    by_group = dcols.reshape(groups, b, ho, wo, kh, kw, c // groups).transpose(1, 2, 3, 4, 5, 0, 6)
    return np.ascontiguousarray(by_group).reshape(window_shape)


def _finish(y: np.ndarray, bias: np.ndarray | None, relu: bool) -> np.ndarray:
    """Add the bias (in the output's dtype) and apply a fused ReLU, in place."""
    if bias is not None:
        y += bias.astype(y.dtype, copy=False)
    return relu_op(y, out=y) if relu else y


def _output_grad(dy: np.ndarray, x: np.ndarray, n: int, relu_output: np.ndarray | None) -> np.ndarray:
    """``dy`` as (rows, N) in the dtype of ``x``, masked where a fused ReLU's output is not positive."""
    dy2 = dy.astype(x.dtype, copy=False).reshape(-1, n)
    return dy2 if relu_output is None else relu_backward(dy2, relu_output.reshape(-1, n))


def _backward_chunks(dy2, view, w2, dweight, dxp, geometry) -> None:
    """Accumulate ``dweight`` and scatter ``dxp`` a few images at a time (either may be None)."""
    per_image = int(np.prod(view.shape[1:3]))
    chunks = _im2col_chunks(view) if dweight is not None else _row_chunks(view)
    dcols_buffer = None
    partial = np.empty_like(dweight) if dweight is not None else None
    for rows, cols in chunks:
        dy_chunk = dy2[rows]
        if dweight is not None:
            np.matmul(cols.T, dy_chunk, out=partial)
            dweight += partial
        if dxp is not None:
            if dcols_buffer is None:
                dcols_buffer = np.empty((dy_chunk.shape[0], w2.shape[0]), dtype=dxp.dtype)
            dcols = dcols_buffer[:dy_chunk.shape[0]]
            np.matmul(dy_chunk, w2.T, out=dcols)
            images = slice(rows.start // per_image, rows.stop // per_image)
            window_add(dxp[images], dcols.reshape(-1, *view.shape[1:]), geometry)


def _im2col_chunks(view: np.ndarray):
    """Yield ``(rows, cols)``: consecutive output rows and their windows as a 2-D copy.

    ``cols`` is a reused buffer, valid until the next iteration.
    """
    per_row = int(np.prod(view.shape[3:]))
    buffer = None
    for rows, images in _chunk_ranges(view):
        count = rows.stop - rows.start
        if buffer is None:
            buffer = np.empty((count, per_row), dtype=view.dtype)
        cols = buffer[:count]
        np.copyto(cols.reshape(images.stop - images.start, *view.shape[1:]), view[images])
        yield rows, cols


def _row_chunks(view: np.ndarray):
    """The row ranges of :func:`_im2col_chunks` without building the columns."""
    for rows, _ in _chunk_ranges(view):
        yield rows, None


def _chunk_ranges(view: np.ndarray):
    """Split the batch so that one chunk's columns hold about ``GEMM_CHUNK_ELEMENTS`` numbers."""
    batch = view.shape[0]
    per_image = int(np.prod(view.shape[1:3]))
    images_per_chunk = max(1, tuning.GEMM_CHUNK_ELEMENTS // max(1, view[0].size))
    for start in range(0, batch, images_per_chunk):
        stop = min(batch, start + images_per_chunk)
        yield slice(start * per_image, stop * per_image), slice(start, stop)
