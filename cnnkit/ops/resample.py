"""Upsampling by an integer factor per axis, nearest or bilinear, as gathers with precomputed taps.

Each axis is resampled on its own (bilinear is separable): output position ``o`` reads input
positions ``index[t][o]`` with weights ``weight[t][o]``, for one tap (nearest) or two (bilinear).
The taps are computed once, when a layer is built (:func:`axis_taps`); forward gathers whole
planes with :func:`numpy.take` (no loop over pixels), backward adds each tap's weighted gradient
back to the input positions it read, exactly (the adjoint), with :func:`numpy.add.reduceat` over
the runs of equal indices (the indices never decrease along an axis).

Source positions follow PyTorch's ``F.interpolate`` with ``scale_factor``, factor ``s`` and
``H`` input rows, ``H*s`` output rows:

- nearest: ``floor(o / s)`` (``mode="nearest"``; Keras's ``UpSampling2D`` too: each row repeated ``s`` times);
- bilinear, ``align_corners=False`` (half-pixel centres, Keras 3's ``interpolation="bilinear"``):
  ``src = max((o + 1/2)/s - 1/2, 0)``;
- bilinear, ``align_corners=True`` (the corner pixels' centres coincide): ``src = o*(H - 1)/(H*s - 1)``;

then rows ``floor(src)`` and ``floor(src) + 1`` (the last row at the edge) weighted
``1 - frac(src)`` and ``frac(src)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisTaps:
    """How one axis is resampled: ``out[o] = sum_t weight[t][o] * in[index[t][o]]``
    (``weight[t]`` None: 1). ``in_size`` is the input's length along the axis."""

    in_size: int
    index: tuple[np.ndarray, ...]
    weight: tuple[np.ndarray | None, ...]

    def gather(self, x: np.ndarray, axis: int) -> np.ndarray:
        """``x`` resampled along ``axis`` (a new array)."""
        out = None
        for index, weight in zip(self.index, self.weight):
            part = np.take(x, index, axis=axis)
            if weight is not None:
                part *= _along(weight, axis, x.ndim, x.dtype)
            out = part if out is None else np.add(out, part, out=out)
        return out

    def scatter(self, dy: np.ndarray, axis: int) -> np.ndarray:
        """The adjoint of :meth:`gather`: each output position's gradient, weighted, added to the
        input positions it read (a new array, ``in_size`` long along ``axis``)."""
        shape = list(dy.shape)
        shape[axis] = self.in_size
        dx = np.zeros(shape, dtype=dy.dtype)
        for index, weight in zip(self.index, self.weight):
            part = dy if weight is None else dy * _along(weight, axis, dy.ndim, dy.dtype)
            starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])   # runs of one input position
            where = (slice(None),) * axis + (index[starts],)
            dx[where] += np.add.reduceat(part, starts, axis=axis)
        return dx


def axis_taps(in_size: int, factor: int, interpolation: str, align_corners: bool) -> AxisTaps:
    """The taps that upsample an axis of ``in_size`` positions ``factor`` times (see the module's rules)."""
    out = np.arange(in_size * factor)
    if interpolation == "nearest":
        return AxisTaps(in_size, (out // factor,), (None,))
    if align_corners:
        source = out * ((in_size - 1) / (out.size - 1)) if out.size > 1 else np.zeros(out.size)
    else:
        source = np.maximum((out + 0.5) / factor - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.intp), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    fraction = source - low
    return AxisTaps(in_size, (low, high), (1.0 - fraction, fraction))


def upsample2d(x: np.ndarray, rows: AxisTaps, cols: AxisTaps) -> np.ndarray:
    """``x`` (B, H, W, C) resampled along H by ``rows`` and along W by ``cols``: (B, Ho, Wo, C)."""
    return cols.gather(rows.gather(x, 1), 2)


def upsample2d_backward(dy: np.ndarray, rows: AxisTaps, cols: AxisTaps) -> np.ndarray:
    """The input gradient of :func:`upsample2d` for ``dy`` (B, Ho, Wo, C): the adjoint, W then H."""
    return rows.scatter(cols.scatter(dy, 2), 1)


def _along(weight: np.ndarray, axis: int, ndim: int, dtype) -> np.ndarray:
    """``weight`` in ``dtype``, shaped to broadcast along ``axis`` of an ``ndim``-array."""
    shape = [1] * ndim
    shape[axis] = weight.size
    return weight.astype(dtype, copy=False).reshape(shape)
