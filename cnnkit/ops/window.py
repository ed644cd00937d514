"""The one windowing primitive that convolution and both poolings share.

A 2-D window is a pair of :class:`~cnnkit.arithmetic.Window` (height, width), each with its
kernel K, stride S, padding (before, after) and dilation D. Forward passes *gather*: pad the
volume, then look at it through a zero-copy ``(B, Ho, Wo, Kh, Kw, C)`` view in which
``view[b, i, j, p, q, c] = padded[b, i*S_h + p*D_h, j*S_w + q*D_w, c]``. Backward passes
*scatter*: :func:`window_add` adds a gradient of that shape back into the padded input
gradient, one strided slice per kernel tap, and :func:`unpad` drops the border.

Stride, padding and dilation are handled here and nowhere else.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Window

Windows = tuple[Window, Window]


def has_padding(windows: Windows) -> bool:
    """True when any side of either axis is padded."""
    return any(win.pad_before or win.pad_after for win in windows)


def padded_shape(shape: tuple[int, ...], windows: Windows) -> tuple[int, int, int, int]:
    """``(B, H + P_before + P_after, W + ..., C)`` for an input of shape ``(B, H, W, C)``."""
    b, h, w, c = shape
    wh, ww = windows
    return b, h + wh.pad_before + wh.pad_after, w + ww.pad_before + ww.pad_after, c


def output_hw(padded_hw: tuple[int, int], windows: Windows) -> tuple[int, int]:
    """Output (Ho, Wo) of windows sliding over a padded plane: ``floor((Hp - span)/S) + 1``.

    The layers have already checked (with the lecture's formula) that the window fits.
    """
    return tuple((size - win.effective_kernel) // win.stride + 1 for size, win in zip(padded_hw, windows))


def pad(x: np.ndarray, windows: Windows, value: float = 0.0) -> np.ndarray:
    """Pad ``(B, H, W, C)`` by each window's (before, after) amounts with ``value``.

    Returns ``x`` itself (no copy) when there is no padding. Only the border is filled, the
    interior is written once by the copy of ``x``.
    """
    if not has_padding(windows):
        return x
    wh, ww = windows
    _, h, w, _ = x.shape
    out = np.empty(padded_shape(x.shape, windows), dtype=x.dtype)
    top, left = wh.pad_before, ww.pad_before
    out[:, :top] = value
    out[:, top + h:] = value
    out[:, top:top + h, :left] = value
    out[:, top:top + h, left + w:] = value
    out[:, top:top + h, left:left + w] = x
    return out


def unpad(dpadded: np.ndarray, windows: Windows) -> np.ndarray:
    """The interior of a padded gradient: a view, the inverse of :func:`pad`."""
    if not has_padding(windows):
        return dpadded
    wh, ww = windows
    _, hp, wp, _ = dpadded.shape
    return dpadded[:, wh.pad_before:hp - wh.pad_after, ww.pad_before:wp - ww.pad_after]


def windowed_view(xp: np.ndarray, windows: Windows) -> np.ndarray:
    """A read-only zero-copy view ``(B, Ho, Wo, Kh, Kw, C)`` of every window of a padded volume.

    Rows or columns at the end that no window reaches (stride not dividing) are simply not
    seen, as in PyTorch.
    """
    wh, ww = windows
    b, hp, wp, c = xp.shape
    ho, wo = output_hw((hp, wp), windows)
    sb, sh, sw, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(b, ho, wo, wh.kernel, ww.kernel, c),
        strides=(sb, sh * wh.stride, sw * ww.stride, sh * wh.dilation, sw * ww.dilation, sc),
        writeable=False)


def tap_slices(windows: Windows, out_hw: tuple[int, int]):
    """Yield ``(p, q, rows, cols)`` for each kernel tap: the padded-input slices it reads.

    ``padded[:, rows, cols]`` has shape ``(B, Ho, Wo, C)`` and holds, at output position
    ``(i, j)``, the input pixel that tap ``(p, q)`` of window ``(i, j)`` sees.
    """
    wh, ww = windows
    ho, wo = out_hw
    for p in range(wh.kernel):
        top = p * wh.dilation
        rows = slice(top, top + (ho - 1) * wh.stride + 1, wh.stride)
        for q in range(ww.kernel):
            left = q * ww.dilation
            yield p, q, rows, slice(left, left + (wo - 1) * ww.stride + 1, ww.stride)


def window_add(dpadded: np.ndarray, dwin: np.ndarray, windows: Windows) -> np.ndarray:
    """Add a window gradient ``(B, Ho, Wo, Kh, Kw, C)`` into the padded input gradient, in place.

    The adjoint of :func:`windowed_view`: a pixel seen by several windows receives the sum of
    their gradients. One vectorised strided add per kernel tap (Kh*Kw in all). ``dwin`` may be
    a broadcast view. Returns ``dpadded``.
    """
    for p, q, rows, cols in tap_slices(windows, dwin.shape[1:3]):
        target = dpadded[:, rows, cols]
        np.add(target, dwin[:, :, :, p, q], out=target)
    return dpadded
