"""2-D convolution (cross-correlation, as in every framework) as one matrix product.

Channels-last makes each window of the padded input a row of ``Kh*Kw*C`` numbers in the
same order as the weight ``(Kh, Kw, C, N)`` reshaped to ``(Kh*Kw*C, N)``, so::

    y[b, i, j, :] = cols[b*Ho*Wo + i*Wo + j, :] @ weight.reshape(Kh*Kw*C, N) + bias

with ``cols`` the windowed view of the padded input flattened to ``(B*Ho*Wo, Kh*Kw*C)``
(im2col). The flattening copies, so it is done a few images at a time into one reused
buffer. Backward is the same product transposed: ``dweight = cols^T @ dy``,
``dbias = sum(dy)``, and ``dcols = dy @ weight^T`` scattered back with :func:`window_add`.

When :func:`cnnkit.ops.jit.enabled` the compiled path :mod:`cnnkit.ops.conv_fast` runs
instead; ``compiled=False`` forces this module's NumPy reference.
"""

from __future__ import annotations

import numpy as np

from . import conv_fast, jit, winograd
from .activation import relu as relu_op
from .activation import relu_backward
from .products import matmul
from .reduce import sum_rows
from .window import Windows, has_padding, pad, padded_shape, unpad, window_add, windowed_view

#: Numbers in one im2col buffer (64 MB of float32); always at least one image.
CHUNK_ELEMENTS = 1 << 24
ALGORITHMS = ("auto", "gemm", "winograd2", "winograd4")
#: Winograd pays when its per-position products are large enough. Measured with
#: ``python -m benchmarks.conv_paths`` (2 cores): with its transformed filters cached, F(4x4)
#: forward wins from about 32 output tiles and F(2x2) below; but the cache costs 4x (F(2x2):
#: 1.8x) the layer's weights in memory, so with fewer than 64 tiles (VGG16's conv4 and conv5
#: at batch 1) the GEMM path runs instead, keeping VGG16's inference peak near weights plus
#: activations. The backward, which also forms ``(m+2)^2`` weight-gradient products, wins from
#: about 128 tiles.
WINOGRAD_MIN_CHANNELS = 16
FORWARD_F4_MIN_TILES = 64
BACKWARD_F4_MIN_TILES = 128


def choose_algorithm(x_shape: tuple[int, ...], weight_shape: tuple[int, ...], windows: Windows,
                     requested: str = "auto", backward: bool = False) -> str:
    """The convolution path for these shapes: ``winograd4`` (F(4x4, 3x3)) for 3x3 stride-1
    convolutions with at least 16 channels and enough 4x4 output tiles in the batch, otherwise
    ``gemm`` (windowed view + one matrix product). ``winograd2`` runs only when requested.

    A requested algorithm other than ``auto`` is returned as is (the layer has validated it).
    """
    if requested != "auto":
        return requested
    if not winograd.supports(weight_shape, windows) or min(weight_shape[2:]) < WINOGRAD_MIN_CHANNELS:
        return "gemm"
    out_h, out_w = (size + win.pad_before + win.pad_after - 2 for size, win in zip(x_shape[1:3], windows))
    tiles = x_shape[0] * -(-out_h // 4) * -(-out_w // 4)
    return "winograd4" if tiles >= (BACKWARD_F4_MIN_TILES if backward else FORWARD_F4_MIN_TILES) else "gemm"


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, windows: Windows,
           compiled: bool = True, relu: bool = False) -> np.ndarray:
    """Convolve ``x`` (B, H, W, C) with ``weight`` (Kh, Kw, C, N) and add ``bias`` (N,) or None;
    then apply ReLU when ``relu`` (the compiled path does it block by block, in cache).

    Returns ``(B, Ho, Wo, N)`` in the dtype of ``x`` with
    ``Ho = floor((H + P_before + P_after - D*(Kh - 1) - 1)/S) + 1`` (likewise Wo).
    """
    weight = _match_dtype(weight, x)
    kh, kw, c, n = weight.shape
    if _is_pointwise(weight, windows):
        # a 1x1 stride-1 convolution is already a matrix product: no window copy
        y = matmul(x.reshape(-1, c), weight.reshape(c, n)).reshape(*x.shape[:3], n)
    elif compiled and jit.enabled():
        return conv_fast.conv2d(x, weight, None if bias is None else _match_dtype(bias, x), windows, relu)
    else:
        view = windowed_view(pad(x, windows), windows)
        b, ho, wo = view.shape[:3]
        y = np.empty((b, ho, wo, n), dtype=x.dtype)
        y2 = y.reshape(-1, n)
        w2 = weight.reshape(kh * kw * c, n)
        for rows, cols in _im2col_chunks(view):
            np.matmul(cols, w2, out=y2[rows])
    if bias is not None:
        y += _match_dtype(bias, x)
    return relu_op(y, out=y) if relu else y


def conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, windows: Windows,
                    need_input_grad: bool = True, need_weight_grad: bool = True, compiled: bool = True,
                    relu_output: np.ndarray | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d` given ``dy`` (B, Ho, Wo, N).

    ``dx`` is None when ``need_input_grad`` is False (a first layer), ``dweight`` is None when
    ``need_weight_grad`` is False (a frozen layer), which skips a third of the work each.
    ``relu_output`` is the output of a fused ReLU (``conv2d(..., relu=True)``): ``dy`` then
    counts only where it is positive.
    """
    weight = _match_dtype(weight, x)
    kh, kw, c, n = weight.shape
    dy2 = _match_dtype(dy, x).reshape(-1, n)
    pointwise = _is_pointwise(weight, windows)
    mask = None if relu_output is None else relu_output.reshape(-1, n)
    if compiled and jit.enabled() and not pointwise:
        return conv_fast.conv2d_backward(dy2, x, weight, windows, need_input_grad, need_weight_grad, mask)
    if mask is not None:
        dy2 = relu_backward(dy2, mask)
    dbias = sum_rows(dy2)
    w2 = weight.reshape(kh * kw * c, n)
    if pointwise:
        x2 = x.reshape(-1, c)
        dweight = matmul(x2.T, dy2).reshape(weight.shape) if need_weight_grad else None
        dx = matmul(dy2, w2.T).reshape(x.shape) if need_input_grad else None
        return dx, dweight, dbias
    view = windowed_view(pad(x, windows), windows)
    dweight = np.zeros_like(w2) if need_weight_grad else None
    dxp = np.zeros(padded_shape(x.shape, windows), dtype=x.dtype) if need_input_grad else None
    if need_weight_grad or need_input_grad:
        _backward_chunks(dy2, view, w2, dweight, dxp, windows)
    dx = unpad(dxp, windows) if need_input_grad else None
    return dx, (dweight.reshape(weight.shape) if need_weight_grad else None), dbias


def _backward_chunks(dy2, view, w2, dweight, dxp, windows) -> None:
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
            window_add(dxp[images], dcols.reshape(-1, *view.shape[1:]), windows)


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
    """Split the batch so that one chunk's columns hold about :data:`CHUNK_ELEMENTS` numbers."""
    batch = view.shape[0]
    per_image = int(np.prod(view.shape[1:3]))
    images_per_chunk = max(1, CHUNK_ELEMENTS // max(1, view[0].size))
    for start in range(0, batch, images_per_chunk):
        stop = min(batch, start + images_per_chunk)
        yield slice(start * per_image, stop * per_image), slice(start, stop)


def _is_pointwise(weight: np.ndarray, windows: Windows) -> bool:
    """A 1x1 kernel with stride 1 and no padding reads each pixel exactly once, in place."""
    return (weight.shape[:2] == (1, 1) and not has_padding(windows)
            and all(win.stride == 1 for win in windows))


def _match_dtype(array: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``array`` in the dtype of ``like`` (no copy when it already is): outputs follow the input."""
    return array.astype(like.dtype, copy=False)
