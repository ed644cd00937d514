"""Transposed convolution: the input gradient of a convolution, run as a layer's forward.

A transposed convolution of ``x`` (B, H, W, C) by ``weight`` (Kh, Kw, N, C) is the ``dx`` that
:func:`cnnkit.ops.conv2d_backward` returns for the convolution of an N-channel volume by that
same array (a weight ``(Kh, Kw, C_in, C_out)`` with C_in = N, C_out = C) when ``x`` is its output
gradient. Every input pixel spreads ``weight[p, q] @ x[b, i, j]`` to position ``(i*S_h + p*D_h,
j*S_w + q*D_w)`` of a line of ``(H - 1)*S + D*(K - 1) + 1`` rows (the "full" output); the
convolution's padding (:func:`cnnkit.arithmetic.transposed_windows`) is cropped from it and rows
of zeros close it when the output is longer (``output_padding``)::

    y[b, o, :] = sum over (i, p) with o + P_before = i*S + p*D of weight[p, :, :] @ x[b, i, :]  (+ bias)

Forward: per chunk of images one matrix product ``(B*H*W, C) @ (C, Kh*Kw*N)`` gives every tap's
contribution, and :func:`~cnnkit.ops.window.window_add` adds them into the full output, one
strided add per tap (the adjoint of the windowed view, as the GEMM convolution's backward does).
Backward is the convolution itself: ``dx`` is :func:`cnnkit.ops.conv2d` of the output gradient
(any row of the algorithm table computes it), ``dweight`` that convolution's weight gradient for
the output gradient ``x`` (:func:`cnnkit.ops.conv2d_backward`), ``dbias`` the sum of ``dy``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..arithmetic import Geometry
from . import tuning
from .conv import ConvContext, conv2d, conv2d_backward
from .products import matmul
from .reduce import sum_rows
from .window import window_add


class TransposedContext(NamedTuple):
    """What :func:`conv_transpose2d_backward` needs from the :func:`conv_transpose2d` it follows."""

    x: np.ndarray
    weight: np.ndarray      # (Kh, Kw, N, C), in the dtype of x
    geometry: Geometry      # the windows of the convolution it transposes
    filters: dict | None    # the caller's filter cache, for the backward's convolution


def full_hw(geometry: Geometry, hw: tuple[int, int]) -> tuple[int, int]:
    """The rows and columns the taps of an ``(H, W)`` input write: ``(H - 1)*S + D*(K - 1) + 1`` per axis."""
    return tuple((size - 1) * win.stride + win.effective_kernel for size, win in zip(hw, geometry))


def written_hw(geometry: Geometry, hw: tuple[int, int]) -> tuple[int, int]:
    """The output rows and columns the taps write (the rest, up to the output size, are zeros):
    the full line less the cropped padding, the input size of the convolution it transposes."""
    return tuple(full - win.pad_before - win.pad_after for full, win in zip(full_hw(geometry, hw), geometry))


def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                     output_hw: tuple[int, int], filter_cache: dict | None = None
                     ) -> tuple[np.ndarray, TransposedContext]:
    """Transposed convolution of ``x`` (B, H, W, C) by ``weight`` (Kh, Kw, N, C), plus ``bias``
    (N,) or None: ``(y, context)`` with ``y`` (B, Ho, Wo, N) in the dtype of ``x``.

    ``geometry`` is the convolution it transposes (its padding cropped from the full output) and
    ``output_hw`` the output size, both from :func:`cnnkit.arithmetic.transposed_windows`.
    ``filter_cache``: as :func:`cnnkit.ops.conv2d` takes it, for the backward's convolution.
    """
    weight = weight.astype(x.dtype, copy=False)
    kh, kw, n, c = weight.shape
    b, h, w, _ = x.shape
    full = np.zeros((b, *full_hw(geometry, (h, w)), n), dtype=x.dtype)
    taps = weight.reshape(kh * kw * n, c).T                     # (C, Kh*Kw*N): every tap's filters
    per_image = h * w * kh * kw * n
    step = max(1, tuning.GEMM_CHUNK_ELEMENTS // per_image)      # the columns of a few images at a time
    for start in range(0, b, step):
        images = slice(start, min(b, start + step))
        cols = matmul(x[images].reshape(-1, c), taps)
        window_add(full[images], cols.reshape(-1, h, w, kh, kw, n), geometry)
    y = _cropped(full, geometry, output_hw)
    if bias is not None:
        y += bias.astype(y.dtype, copy=False)
    return y, TransposedContext(x, weight, geometry, filter_cache)


def conv_transpose2d_backward(dy: np.ndarray, context: TransposedContext, need_input_grad: bool = True,
                              need_weight_grad: bool = True
                              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Gradients ``(dx, dweight, dbias)`` of the :func:`conv_transpose2d` that returned ``context``,
    given ``dy`` (B, Ho, Wo, N), in the dtype of its input; ``dx`` (``dweight``) is None when
    ``need_input_grad`` (``need_weight_grad``) is False."""
    x, weight, geometry, filters = context
    dy = dy.astype(x.dtype, copy=False)
    dbias = sum_rows(dy.reshape(-1, dy.shape[-1]))
    rows, cols = written_hw(geometry, x.shape[1:3])
    written = dy if dy.shape[1:3] == (rows, cols) else np.ascontiguousarray(dy[:, :rows, :cols])
    dx = None
    if need_input_grad:
        dx, conv = conv2d(written, weight, None, geometry, filter_cache=filters)
    else:
        conv = ConvContext(written, None, weight, geometry, "auto", filters)
    dweight = conv2d_backward(x, conv, need_input_grad=False)[1] if need_weight_grad else None
    return dx, dweight, dbias


def _cropped(full: np.ndarray, geometry: Geometry, output_hw: tuple[int, int]) -> np.ndarray:
    """The output inside the full one: the padding cropped, and rows and columns of zeros after
    what the taps wrote up to ``output_hw`` (a new array unless nothing changes)."""
    (top, left), (ho, wo) = (geometry.top, geometry.left), output_hw
    if (top, left) == (0, 0) and full.shape[1:3] == (ho, wo):
        return full
    inside = full[:, top:top + ho, left:left + wo]
    if inside.shape[1:3] == (ho, wo):
        return np.ascontiguousarray(inside)
    y = np.zeros((full.shape[0], ho, wo, full.shape[3]), dtype=full.dtype)
    y[:, :inside.shape[1], :inside.shape[2]] = inside
    return y
