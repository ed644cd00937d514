"""The one windowing primitive that convolution and both poolings share.

A 2-D window is a :class:`~cnnkit.arithmetic.Geometry`: one :class:`~cnnkit.arithmetic.Window`
per axis (height, width), each with its kernel K, stride S, padding (before, after) and
dilation D, and the sizes that follow from them (output and padded planes). Forward passes
*gather*: pad the volume, then look at it through a zero-copy ``(B, Ho, Wo, Kh, Kw, C)`` view
in which ``view[b, i, j, p, q, c] = padded[b, i*S_h + p*D_h, j*S_w + q*D_w, c]``. Backward
passes *scatter*: :func:`window_add` adds a gradient of that shape back into the padded input
gradient, one strided slice per kernel tap, and :func:`unpad` drops the border.

Stride, padding and dilation are applied to arrays here and nowhere else; the compiled kernels
apply the same geometry (``Geometry.kernel_args``) as they read, padding as zeros never copied.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry


def pad(x: np.ndarray, geometry: Geometry, value: float = 0.0) -> np.ndarray:
    """Pad ``(B, H, W, C)`` by each window's (before, after) amounts with ``value``.

    Returns ``x`` itself (no copy) when there is no padding. Only the border is filled, the
    interior is written once by the copy of ``x``.
    """
    if not geometry.padded:
        return x
    wh, ww = geometry
    _, h, w, _ = x.shape
    out = np.empty(geometry.padded_shape(x.shape), dtype=x.dtype)
    top, left = wh.pad_before, ww.pad_before
    out[:, :top] = value
    out[:, top + h:] = value
    out[:, top:top + h, :left] = value
    out[:, top:top + h, left + w:] = value
    out[:, top:top + h, left:left + w] = x
    return out


def unpad(dpadded: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The interior of a padded gradient: a view, the inverse of :func:`pad`."""
    if not geometry.padded:
        return dpadded
    wh, ww = geometry
    _, hp, wp, _ = dpadded.shape
    return dpadded[:, wh.pad_before:hp - wh.pad_after, ww.pad_before:wp - ww.pad_after]


def windowed_view(xp: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A read-only zero-copy view ``(B, Ho, Wo, Kh, Kw, C)`` of every window of a padded volume.

    Rows or columns at the end that no window reaches (stride not dividing) are simply not
    seen, as in PyTorch.
    """
    wh, ww = geometry
    b, hp, wp, c = xp.shape
    ho, wo = wh.positions(hp), ww.positions(wp)
    sb, sh, sw, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(b, ho, wo, wh.kernel, ww.kernel, c),
        strides=(sb, sh * wh.stride, sw * ww.stride, sh * wh.dilation, sw * ww.dilation, sc),
        writeable=False)


def tap_slices(geometry: Geometry, out_hw: tuple[int, int]):
    """Yield ``(p, q, rows, cols)`` for each kernel tap: the padded-input slices it reads.

    ``padded[:, rows, cols]`` has shape ``(B, Ho, Wo, C)`` and holds, at output position
    ``(i, j)``, the input pixel that tap ``(p, q)`` of window ``(i, j)`` sees.
    """
    wh, ww = geometry
    ho, wo = out_hw
    for p in range(wh.kernel):
        top = p * wh.dilation
        rows = slice(top, top + (ho - 1) * wh.stride + 1, wh.stride)
        for q in range(ww.kernel):
            left = q * ww.dilation
            yield p, q, rows, slice(left, left + (wo - 1) * ww.stride + 1, ww.stride)


def input_rows(geometry: Geometry, lo: int, hi: int) -> slice:
    """The rows of the padded input that output rows ``lo .. hi-1`` read: ``[lo*S_h, (hi-1)*S_h +
    D_h*(K_h-1) + 1)``. A block of output rows is computed from the padded input cut to these rows,
    its taps given by ``tap_slices(geometry, (hi - lo, Wo))``."""
    height = geometry[0]
    return slice(lo * height.stride, (hi - 1) * height.stride + height.effective_kernel)


def pad_rows(x: np.ndarray, geometry: Geometry, rows: slice, out: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``pad(x, geometry)`` (padded coordinates, step 1, as :func:`input_rows`
    gives them), written into ``out`` ``(B, rows, W + P_left + P_right, C)``, without making the
    padded volume: the border is zeros written into ``out``, the interior copied from ``x``.
    Returns ``out``, or a view of ``x`` itself when nothing is padded."""
    if not geometry.padded:
        return x[:, rows]
    above, below, inside = _row_band(x.shape[1], geometry, rows)
    left, w = geometry.left, x.shape[2]
    out[:, :above] = 0
    out[:, below:] = 0
    band = out[:, above:below]
    band[:, :, :left] = 0
    band[:, :, left + w:] = 0
    band[:, :, left:left + w] = x[:, inside]
    return out


def unpad_rows_add(dx: np.ndarray, drows: np.ndarray, geometry: Geometry, rows: slice) -> np.ndarray:
    """Add the gradient ``drows`` of :func:`pad_rows`'s output into ``dx`` (the gradient of ``x``),
    in place: its adjoint, the part that lies inside the input. Returns ``dx``."""
    if not geometry.padded:
        target = dx[:, rows]
        np.add(target, drows, out=target)
        return dx
    above, below, inside = _row_band(dx.shape[1], geometry, rows)
    target = dx[:, inside]
    np.add(target, drows[:, above:below, geometry.left:geometry.left + dx.shape[2]], out=target)
    return dx


def _row_band(height: int, geometry: Geometry, rows: slice) -> tuple[int, int, slice]:
    """``(above, below, inside)``: padded rows ``rows`` hold the input's rows ``inside`` at
    ``above .. below-1``; the rest of them is padding."""
    first, last = rows.start - geometry.top, rows.stop - geometry.top   # as rows of the input
    lo = min(max(first, 0), height)
    hi = max(min(last, height), lo)
    above = min(max(lo - first, 0), last - first)
    return above, above + hi - lo, slice(lo, hi)


def window_add(dpadded: np.ndarray, dwin: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Add a window gradient ``(B, Ho, Wo, Kh, Kw, C)`` into the padded input gradient, in place.

    The adjoint of :func:`windowed_view`: a pixel seen by several windows receives the sum of
    their gradients. One vectorised strided add per kernel tap (Kh*Kw in all). ``dwin`` may be
    a broadcast view. Returns ``dpadded``.
    """
    for p, q, rows, cols in tap_slices(geometry, dwin.shape[1:3]):
        target = dpadded[:, rows, cols]
        np.add(target, dwin[:, :, :, p, q], out=target)
    return dpadded
