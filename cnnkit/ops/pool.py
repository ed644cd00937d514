"""Max and average pooling over K x K windows, and their global forms, with backward.

Each depth slice is pooled independently. Two paths give the same numbers:

- *tiled*: when the windows tile the input exactly (stride = kernel, no padding, no
  dilation, no remainder) the volume reshapes for free to ``(B, Ho, Kh, Wo, Kw, C)``;
- *general*: otherwise the padded input is read through :func:`windowed_view`.

Both reduce one kernel tap at a time (Kh*Kw vectorised operations on ``(B, Ho, Wo, C)``
slices). Max pooling remembers, per output, which tap won (``tap = p*Kw + q``; ties go to
the first tap in the window, as in PyTorch) in the smallest unsigned int dtype that fits.

Max pooling has a third path, compiled (:mod:`cnnkit.ops.pool_kernels`), that reads each input
once and splits the batch over the worker pool; it runs when :func:`cnnkit.ops.jit.enabled`
and ``compiled`` is not False, and is tested against the other two.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry
from . import jit, pool_kernels
from .parts import in_ranges, part_count
from .window import pad, tap_slices, unpad, window_add, windowed_view


def max_pool2d(x: np.ndarray, geometry: Geometry, with_indices: bool = True, compiled: bool = True
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over each window of ``x`` (B, H, W, C); padding counts as minus infinity.

    Returns ``(y, winners)``: ``y`` (B, Ho, Wo, C) and the winning tap of each output, or None
    when ``with_indices`` is False (inference).
    """
    if compiled and jit.enabled():
        return _compiled_max_pool(x, geometry, with_indices)
    return _max_taps(_taps(x, geometry, -np.inf), with_indices)


def max_pool2d_backward(dy: np.ndarray, winners: np.ndarray, geometry: Geometry,
                        input_shape: tuple[int, int, int, int], compiled: bool = True) -> np.ndarray:
    """Route each output gradient to the input pixel that won its window (``winners`` from
    :func:`max_pool2d`)."""
    if compiled and jit.enabled():
        return _compiled_max_pool_backward(dy, winners, geometry, input_shape)
    if _tiles(input_shape, geometry):
        return _max_backward_tiled(dy, winners, geometry, input_shape)
    return _max_backward_general(dy, winners, geometry, input_shape)


def avg_pool2d(x: np.ndarray, geometry: Geometry, count_include_pad: bool = False) -> np.ndarray:
    """Mean over each window of ``x`` (B, H, W, C).

    The divisor is the number of real (unpadded) pixels in the window, or with
    ``count_include_pad=True`` Kh*Kw less the window's ``ceil_mode`` overhang (a
    :attr:`~cnnkit.arithmetic.Window.overhang` of the geometry, which is not padding); the two
    agree when there is no padding.
    """
    total = None
    for tap in _taps(x, geometry, 0.0):
        if total is None:
            total = tap.copy()
        else:
            np.add(total, tap, out=total)
    total *= _inverse_counts(x.shape, geometry, count_include_pad, x.dtype)
    return total


def avg_pool2d_backward(dy: np.ndarray, geometry: Geometry, input_shape: tuple[int, int, int, int],
                        count_include_pad: bool = False) -> np.ndarray:
    """Spread each output gradient evenly (by the forward's divisor) over its window."""
    scaled = dy * _inverse_counts(input_shape, geometry, count_include_pad, dy.dtype)
    if _tiles(input_shape, geometry):
        return _spread_tiled(scaled, geometry, input_shape)
    return _spread_general(scaled, geometry, input_shape)


def global_avg_pool2d(x: np.ndarray) -> np.ndarray:
    """Mean of each channel over the H x W plane: ``(B, H, W, C) -> (B, C)``."""
    return x.mean(axis=(1, 2), dtype=x.dtype)


def global_avg_pool2d_backward(dy: np.ndarray, input_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Each of the H*W pixels receives ``dy / (H*W)``."""
    _, h, w, _ = input_shape
    dx = np.empty(input_shape, dtype=dy.dtype)
    dx[...] = (dy / np.asarray(h * w, dtype=dy.dtype))[:, None, None, :]
    return dx


def global_max_pool2d(x: np.ndarray, with_indices: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Max of each channel over the H x W plane: ``(B, H, W, C) -> (B, C)``, and the flat
    position ``h*W + w`` of each maximum (the first on ties), or None without indices."""
    if not with_indices:
        return x.max(axis=(1, 2)), None
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    positions = flat.argmax(axis=1)
    y = np.take_along_axis(flat, positions[:, None], axis=1)[:, 0]
    return y, positions.astype(np.min_scalar_type(h * w - 1))


def global_max_pool2d_backward(dy: np.ndarray, positions: np.ndarray,
                               input_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Route each channel's gradient to the pixel that held its maximum."""
    b, h, w, c = input_shape
    dx = np.zeros((b, h * w, c), dtype=dy.dtype)
    np.put_along_axis(dx, positions[:, None].astype(np.intp), dy[:, None], axis=1)
    return dx.reshape(input_shape)


# ----------------------------------------------------------------- shared pieces

def _compiled_max_pool(x, geometry: Geometry, with_indices):
    x = np.ascontiguousarray(x)
    b, _, _, c = x.shape
    y = np.empty((b, *geometry.output_hw(x.shape[1:3]), c), dtype=x.dtype)
    kh, kw = geometry.kernel
    winners = np.empty(y.shape if with_indices else (1, 1, 1, 1), dtype=np.min_scalar_type(kh * kw - 1))

    def work(first, stop):   # images first..stop: the pool's workers take disjoint images
        pool_kernels.max_pool(x, *geometry.kernel_args, first, stop, y, winners, with_indices)
    in_ranges(work, b, part_count(b))
    return y, (winners if with_indices else None)


def _compiled_max_pool_backward(dy, winners, geometry: Geometry, input_shape):
    dy = np.ascontiguousarray(dy)
    tiled = _tiles(input_shape, geometry)
    dx = (np.empty if tiled else np.zeros)(input_shape, dtype=dy.dtype)

    def work(first, stop):
        pool_kernels.max_pool_backward(dy, winners, *geometry.kernel_args, first, stop, tiled, dx)
    in_ranges(work, dy.shape[0], part_count(dy.shape[0]))
    return dx


def _tiles(shape: tuple[int, ...], geometry: Geometry) -> bool:
    """True when the windows cut the (H, W) plane of ``shape`` (B, H, W, C) into disjoint tiles
    that cover it all (:meth:`Geometry.tiles_exactly`)."""
    return geometry.tiles_exactly(shape[1:3])


def _taps(x: np.ndarray, geometry: Geometry, pad_value: float, tiled: bool | None = None):
    """The Kh*Kw kernel taps as ``(B, Ho, Wo, C)`` views, in row-major tap order.

    ``tiled`` forces a path (for tests); by default the tiled path is used when it applies.
    """
    kh, kw = geometry.kernel
    if tiled if tiled is not None else _tiles(x.shape, geometry):
        b, h, w, c = x.shape
        x6 = x.reshape(b, h // kh, kh, w // kw, kw, c)
        return [x6[:, :, p, :, q] for p in range(kh) for q in range(kw)]
    view = windowed_view(pad(x, geometry, pad_value), geometry)
    return [view[:, :, :, p, q] for p in range(kh) for q in range(kw)]


def _max_taps(taps: list[np.ndarray], with_indices: bool
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Running maximum over the taps; with indices, the first tap reaching the maximum."""
    y = taps[0].copy()
    if not with_indices:
        for tap in taps[1:]:
            np.maximum(y, tap, out=y)
        return y, None
    index_dtype = np.min_scalar_type(len(taps) - 1)
    winner = np.zeros(y.shape, dtype=index_dtype)
    beats = np.empty(y.shape, dtype=bool)
    candidate = np.empty(y.shape, dtype=index_dtype)
    for tap_id, tap in enumerate(taps[1:], start=1):
        np.greater(tap, y, out=beats)
        np.maximum(y, tap, out=y)
        # taps come in increasing order, so a new strict winner always has the largest id yet:
        # max(winner, beats * id) replaces a masked assignment that is 20x slower
        np.multiply(beats, index_dtype.type(tap_id), out=candidate)
        np.maximum(winner, candidate, out=winner)
    return y, winner


def _max_backward_tiled(dy, winners, geometry, input_shape) -> np.ndarray:
    """Disjoint windows: write each tile's gradient at once, no scatter needed."""
    kh, kw = geometry.kernel
    b, ho, wo, c = dy.shape
    tap_ids = np.arange(kh * kw, dtype=winners.dtype).reshape(1, 1, kh, 1, kw, 1)
    dx = np.empty((b, ho, kh, wo, kw, c), dtype=dy.dtype)
    np.multiply(winners[:, :, None, :, None] == tap_ids, dy[:, :, None, :, None], out=dx)
    return dx.reshape(input_shape)


def _max_backward_general(dy, winners, geometry, input_shape) -> np.ndarray:
    """Overlapping or padded windows: each tap adds the gradients it won into its input slice.

    Tap by tap rather than through one (B, Ho, Wo, Kh, Kw, C) array: Kh*Kw times less memory.
    """
    dxp = np.zeros(geometry.padded_shape(input_shape), dtype=dy.dtype)
    won = np.empty(dy.shape, dtype=bool)
    routed = np.empty_like(dy)
    for tap_id, (_, _, rows, cols) in enumerate(tap_slices(geometry, dy.shape[1:3])):
        np.equal(winners, tap_id, out=won)
        np.multiply(won, dy, out=routed)
        target = dxp[:, rows, cols]
        np.add(target, routed, out=target)
    return unpad(dxp, geometry)


def _spread_tiled(scaled, geometry, input_shape) -> np.ndarray:
    """Disjoint windows: every pixel of a tile receives its window's (scaled) gradient."""
    kh, kw = geometry.kernel
    b, ho, wo, c = scaled.shape
    dx = np.empty((b, ho, kh, wo, kw, c), dtype=scaled.dtype)
    dx[...] = scaled[:, :, None, :, None]
    return dx.reshape(input_shape)


def _spread_general(scaled, geometry, input_shape) -> np.ndarray:
    """Every pixel receives the sum of the (scaled) gradients of the windows that contain it."""
    kh, kw = geometry.kernel
    b, ho, wo, c = scaled.shape
    dwin = np.broadcast_to(scaled[:, :, :, None, None], (b, ho, wo, kh, kw, c))
    dxp = np.zeros(geometry.padded_shape(input_shape), dtype=scaled.dtype)
    return unpad(window_add(dxp, dwin, geometry), geometry)


def _inverse_counts(shape: tuple[int, ...], geometry: Geometry, count_include_pad: bool,
                    dtype: np.dtype) -> np.ndarray:
    """``1 / divisor`` for each output position, shaped (1, Ho, Wo, 1) (or a scalar).

    The divisor counts the window's input pixels, and with ``count_include_pad`` its padding
    too, but never the overhang a ``ceil_mode`` window reaches past the padded input (PyTorch's
    rule, which ONNX Runtime follows).
    """
    kh, kw = geometry.kernel
    overhang = tuple(win.overhang for win in geometry)
    if not geometry.padded or (count_include_pad and not any(overhang)):
        return np.asarray(1.0 / (kh * kw), dtype=dtype)
    wh, ww = geometry
    ones = np.zeros(geometry.padded_shape((1, *shape[1:3], 1)), dtype=dtype)
    if count_include_pad:
        ones[:, :ones.shape[1] - overhang[0], :ones.shape[2] - overhang[1]] = 1
    else:
        _, h, w, _ = shape
        ones[:, wh.pad_before:wh.pad_before + h, ww.pad_before:ww.pad_before + w] = 1
    counts = windowed_view(ones, geometry).sum(axis=(3, 4))
    # a window made only of padding would divide by zero; the layers forbid it (padding < K)
    return (1.0 / np.maximum(counts, 1)).astype(dtype, copy=False)
