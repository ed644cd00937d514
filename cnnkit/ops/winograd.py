"""Winograd minimal filtering for 3x3 stride-1 convolutions: F(2x2, 3x3) and F(4x4, 3x3).

Lavin and Gray (2015): an m x m output tile of a 3x3 correlation is
``Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A`` for the (m+2) x (m+2) input tile ``d`` and the filter
``g``. Summed over input channels, the elementwise product becomes, for each of the
``(m+2)^2`` tile positions, one matrix product ``(tiles x C) @ (C x N)``: F(4x4, 3x3) does
36 multiplications per output tile and channel pair where the direct algorithm does 144.

Both transforms are applied as single matrix products with the Kronecker matrices
``B^T ⊗ B^T`` and ``A^T ⊗ A^T`` over tiles laid out position-major, so every step runs in
BLAS. Backward is the exact adjoint of the same computation: the input gradient scatters
the transformed tiles back, and the weight gradient is ``(G ⊗ G)^T`` of the per-position
products ``V^T @ dM``.

Numerical error in float32 grows with the tile: about 1e-6 relative for F(2x2, 3x3) and
1e-5 for F(4x4, 3x3) (tested against the GEMM path).

This is the NumPy reference, rows ``winograd2`` and ``winograd4`` of the table in
:mod:`cnnkit.ops.conv` (which callers go through); :mod:`cnnkit.ops.winograd_fast` computes
F(4x4, 3x3) with compiled transforms when :func:`cnnkit.ops.jit.enabled`.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import Geometry, Window
from . import tuning
from .activation import relu as relu_op
from .activation import relu_backward
from .reduce import sum_rows
from .window import pad, unpad

_MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}
TILE_SIZES = tuple(_MATRICES)


def _kron(tile: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B^T ⊗ B^T, G ⊗ G, A^T ⊗ A^T)`` for output tile ``tile`` in ``dtype``."""
    bt, g, at = _MATRICES[tile]
    return (np.kron(bt, bt).astype(dtype), np.kron(g, g).astype(dtype), np.kron(at, at).astype(dtype))


def transform_filter(weight: np.ndarray, tile: int) -> np.ndarray:
    """``U = G g G^T`` for every (input, output) channel pair: (3, 3, C, N) -> ((m+2)^2, C, N)."""
    _, g2, _ = _kron(tile, weight.dtype)
    c, n = weight.shape[2:]
    return (g2 @ weight.reshape(9, c * n)).reshape(-1, c, n)


class _Tiling:
    """The output tiles of a convolution of ``geometry`` over an input of ``shape``, and the
    plane they read: the input padded as ``geometry`` says, then further so that tiles cover it."""

    def __init__(self, shape: tuple[int, ...], geometry: Geometry, tile: int):
        self.batch, self.h, self.w, self.c = shape
        self.out_h, self.out_w = geometry.output_hw((self.h, self.w))
        self.tile = tile
        self.th, self.tw = geometry.output_tiles((self.h, self.w), tile)
        self.plane = (self.th * tile + 2, self.tw * tile + 2)
        wh, ww = geometry
        self.extended = Geometry((Window(3, 1, wh.pad_before, self.plane[0] - wh.pad_before - self.h),
                                  Window(3, 1, ww.pad_before, self.plane[1] - ww.pad_before - self.w)))

    def blocks(self, channels: int):
        """Yield ``(images, tile_rows)`` slices of about ``max(WINOGRAD_CHUNK_MIN_TILES,
        WINOGRAD_CHUNK_ELEMENTS / per tile)`` tiles: whole images when they are small, a band of
        tile rows of one image otherwise."""
        per_tile = (self.tile + 2) ** 2 * channels
        rows = max(1, max(tuning.WINOGRAD_CHUNK_MIN_TILES, tuning.WINOGRAD_CHUNK_ELEMENTS // per_tile) // self.tw)
        if rows < self.th:
            for image in range(self.batch):
                for first in range(0, self.th, rows):
                    yield slice(image, image + 1), slice(first, min(first + rows, self.th))
            return
        images = max(1, rows // self.th)
        for first in range(0, self.batch, images):
            yield slice(first, min(first + images, self.batch)), slice(0, self.th)

    def padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` in the tiles' plane, zeros around it."""
        return pad(x, self.extended)

    def input_tiles(self, xp: np.ndarray, images: slice, rows: slice, bt2: np.ndarray) -> np.ndarray:
        """``V = (B^T ⊗ B^T) d`` for the block's tiles of the padded input: ((m+2)^2, tiles, C)."""
        a, m = self.tile + 2, self.tile
        region = xp[images, rows.start * m:]
        sb, sh, sw, sc = region.strides
        shape = (a, a, region.shape[0], rows.stop - rows.start, self.tw, self.c)
        view = np.lib.stride_tricks.as_strided(region, shape, (sh, sw, sb, m * sh, m * sw, sc), writeable=False)
        return (bt2 @ np.ascontiguousarray(view).reshape(a * a, -1)).reshape(a * a, -1, self.c)


def winograd_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                    tile: int = 4, transformed: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
    """3x3 stride-1 convolution of ``x`` (B, H, W, C) by Winograd F(tile x tile, 3x3), in NumPy.

    ``transformed`` is :func:`transform_filter` of ``weight`` when the caller cached it.
    ``relu`` applies a fused ReLU.
    """
    u = transformed if transformed is not None else transform_filter(weight.astype(x.dtype, copy=False), tile)
    geo = _Tiling(x.shape, geometry, tile)
    bt2, _, at2 = _kron(tile, x.dtype)
    n = weight.shape[3]
    xp = geo.padded(x)
    y = np.empty((x.shape[0], geo.th * tile, geo.tw * tile, n), dtype=x.dtype)
    for images, rows in geo.blocks(max(geo.c, n)):
        m_tiles = np.matmul(geo.input_tiles(xp, images, rows, bt2), u)          # ((m+2)^2, tiles, N)
        band = rows.stop - rows.start
        out = (at2 @ m_tiles.reshape(at2.shape[1], -1)).reshape(tile, tile, -1, band, geo.tw, n)
        target = y[images, rows.start * tile:rows.stop * tile]
        target.reshape(out.shape[2], band, tile, geo.tw, tile, n)[...] = out.transpose(2, 3, 0, 4, 1, 5)
    if (geo.th * tile, geo.tw * tile) != (geo.out_h, geo.out_w):
        y = np.ascontiguousarray(y[:, :geo.out_h, :geo.out_w])
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)
    return relu_op(y, out=y) if relu else y


def winograd_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, geometry: Geometry,
                             tile: int = 4, need_input_grad: bool = True, need_weight_grad: bool = True,
                             transformed: np.ndarray | None = None, relu_output: np.ndarray | None = None):
    """``(dx, dweight, dbias)`` of :func:`winograd_conv2d`, its exact adjoint (either gradient may be skipped).

    ``relu_output``: the output of a fused ReLU (``relu=True`` forward); ``dy`` then counts only
    where it is positive.
    """
    dtype = x.dtype
    bt2, g2, at2 = _kron(tile, dtype)
    weight = weight.astype(dtype, copy=False)
    u = transformed if transformed is not None else transform_filter(weight, tile)
    if relu_output is not None:
        dy = relu_backward(dy.astype(dtype, copy=False), relu_output)
    geo = _Tiling(x.shape, geometry, tile)
    n = weight.shape[3]
    dy = dy.astype(dtype, copy=False)
    dbias = sum_rows(dy.reshape(-1, n))
    du = np.zeros_like(u) if need_weight_grad else None
    xp = geo.padded(x) if need_weight_grad else None
    dxp = np.zeros(geo.extended.padded_shape(x.shape), dtype=dtype) if need_input_grad else None
    dyp = _tiled_gradient(dy, geo)
    for images, rows in geo.blocks(max(geo.c, n)):
        dm = _output_tile_grads(dyp, images, rows, geo, at2)                     # ((m+2)^2, tiles, N)
        if need_weight_grad:
            du += np.matmul(geo.input_tiles(xp, images, rows, bt2).transpose(0, 2, 1), dm)
        if need_input_grad:
            dtiles = bt2.T @ np.matmul(dm, u.transpose(0, 2, 1)).reshape(bt2.shape[0], -1)
            _scatter_tiles(dxp[images, rows.start * tile:], dtiles, rows.stop - rows.start, geo)
    dweight = _filter_gradient(du, g2, weight.shape)
    dx = unpad(dxp, geo.extended) if need_input_grad else None
    return dx, dweight, dbias


def filter_gradient(du: np.ndarray | None, tile: int, weight: np.ndarray) -> np.ndarray | None:
    """``dweight = (G ⊗ G)^T du`` in the dtype of ``du``: the gradient of the filters ``weight``
    (3, 3, C, N) from that of their transform ``du`` ((m+2)^2, C, N); None when ``du`` is."""
    return None if du is None else _filter_gradient(du, _kron(tile, du.dtype)[1], weight.shape)


def _filter_gradient(du: np.ndarray | None, g2: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``dweight = (G ⊗ G)^T du``: the gradient of the filters from that of the transformed filters."""
    return None if du is None else (g2.T @ du.reshape(g2.shape[0], -1)).reshape(shape)


def _tiled_gradient(dy: np.ndarray, geo: _Tiling) -> np.ndarray:
    """``dy`` extended with zeros to whole tiles (no copy when it already is)."""
    m = geo.tile
    if (geo.th * m, geo.tw * m) == dy.shape[1:3]:
        return dy
    padded = np.zeros((dy.shape[0], geo.th * m, geo.tw * m, dy.shape[3]), dtype=dy.dtype)
    padded[:, :geo.out_h, :geo.out_w] = dy
    return padded


def _output_tile_grads(dyp: np.ndarray, images: slice, rows: slice, geo: _Tiling, at2: np.ndarray) -> np.ndarray:
    """``dM = (A^T ⊗ A^T)^T dY`` for the block's output tiles."""
    m, n = geo.tile, dyp.shape[3]
    band = dyp[images, rows.start * m:rows.stop * m]
    tiles = band.reshape(band.shape[0], rows.stop - rows.start, m, geo.tw, m, n).transpose(2, 4, 0, 1, 3, 5)
    return (at2.T @ np.ascontiguousarray(tiles).reshape(m * m, -1)).reshape(at2.shape[1], -1, n)


def _scatter_tiles(dxp: np.ndarray, dtiles: np.ndarray, band: int, geo: _Tiling) -> None:
    """Add each (m+2) x (m+2) tile gradient back where the tile was read (tiles overlap by 2)."""
    a, m = geo.tile + 2, geo.tile
    tiles = dtiles.reshape(a, a, dxp.shape[0], band, geo.tw, geo.c)
    for p in range(a):
        for q in range(a):
            dxp[:, p:p + band * m:m, q:q + geo.tw * m:m] += tiles[p, q]
