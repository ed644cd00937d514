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
