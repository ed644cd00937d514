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
"""

from __future__ import annotations

import math

import numpy as np

from .window import Windows

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
#: Numbers in one chunk's transformed tiles; the batch is processed a few images at a time.
CHUNK_ELEMENTS = 1 << 23


def _kron(tile: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B^T ⊗ B^T, G ⊗ G, A^T ⊗ A^T)`` for output tile ``tile`` in ``dtype``."""
    bt, g, at = _MATRICES[tile]
    return (np.kron(bt, bt).astype(dtype), np.kron(g, g).astype(dtype), np.kron(at, at).astype(dtype))


def supports(weight_shape: tuple[int, ...], windows: Windows) -> bool:
    """Winograd applies to 3x3 kernels with stride 1 and no dilation (any padding)."""
    return tuple(weight_shape[:2]) == (3, 3) and all(w.stride == 1 and w.dilation == 1 for w in windows)


def transform_filter(weight: np.ndarray, tile: int) -> np.ndarray:
    """``U = G g G^T`` for every (input, output) channel pair: (3, 3, C, N) -> ((m+2)^2, C, N)."""
    _, g2, _ = _kron(tile, weight.dtype)
    c, n = weight.shape[2:]
    return (g2 @ weight.reshape(9, c * n)).reshape(-1, c, n)


class _Geometry:
    """Tiling of a padded input: tile counts, the padded plane and where the input sits in it."""

    def __init__(self, shape: tuple[int, ...], windows: Windows, tile: int):
        _, self.h, self.w, self.c = shape
        wh, ww = windows
        self.top, self.left = wh.pad_before, ww.pad_before
        self.out_h = self.h + wh.pad_before + wh.pad_after - 2
        self.out_w = self.w + ww.pad_before + ww.pad_after - 2
        self.tile = tile
        self.th, self.tw = math.ceil(self.out_h / tile), math.ceil(self.out_w / tile)
        self.plane = (self.th * tile + 2, self.tw * tile + 2)   # padded further so tiles cover it

    def images_per_chunk(self, channels: int) -> int:
        per_image = (self.tile + 2) ** 2 * self.th * self.tw * channels
        return max(1, CHUNK_ELEMENTS // per_image)

    def padded(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], *self.plane, self.c), dtype=x.dtype)
        out[:, self.top:self.top + self.h, self.left:self.left + self.w] = x
        return out

    def input_tiles(self, x: np.ndarray, bt2: np.ndarray) -> np.ndarray:
        """``V = (B^T ⊗ B^T) d`` for every tile: ((m+2)^2, tiles, C)."""
        xp = self.padded(x)
        a, m = self.tile + 2, self.tile
        sb, sh, sw, sc = xp.strides
        view = np.lib.stride_tricks.as_strided(
            xp, (a, a, x.shape[0], self.th, self.tw, self.c), (sh, sw, sb, m * sh, m * sw, sc), writeable=False)
        tiles = np.ascontiguousarray(view).reshape(a * a, -1)
        return (bt2 @ tiles).reshape(a * a, -1, self.c)


def winograd_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, windows: Windows,
                    tile: int = 4, transformed: np.ndarray | None = None) -> np.ndarray:
    """3x3 stride-1 convolution of ``x`` (B, H, W, C) by Winograd F(tile x tile, 3x3).

    ``transformed`` is :func:`transform_filter` of ``weight`` when the caller cached it.
    """
    geo = _Geometry(x.shape, windows, tile)
    bt2, _, at2 = _kron(tile, x.dtype)
    u = transformed if transformed is not None else transform_filter(weight.astype(x.dtype, copy=False), tile)
    n = weight.shape[3]
    y = np.empty((x.shape[0], geo.th * tile, geo.tw * tile, n), dtype=x.dtype)
    step = geo.images_per_chunk(max(geo.c, n))
    for start in range(0, x.shape[0], step):
        chunk = slice(start, start + step)
        m_tiles = np.matmul(geo.input_tiles(x[chunk], bt2), u)           # ((m+2)^2, tiles, N)
        out = (at2 @ m_tiles.reshape(at2.shape[1], -1)).reshape(tile, tile, -1, geo.th, geo.tw, n)
        images = out.shape[2]
        y[chunk].reshape(images, geo.th, tile, geo.tw, tile, n)[...] = out.transpose(2, 3, 0, 4, 1, 5)
    if (geo.th * tile, geo.tw * tile) != (geo.out_h, geo.out_w):
        y = np.ascontiguousarray(y[:, :geo.out_h, :geo.out_w])
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)
    return y


def winograd_conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, windows: Windows, tile: int = 4,
                             need_input_grad: bool = True, need_weight_grad: bool = True,
                             transformed: np.ndarray | None = None):
    """``(dx, dweight, dbias)`` of :func:`winograd_conv2d`, its exact adjoint (either gradient may be skipped)."""
    geo = _Geometry(x.shape, windows, tile)
    dtype = x.dtype
    bt2, g2, at2 = _kron(tile, dtype)
    weight = weight.astype(dtype, copy=False)
    u = transformed if transformed is not None else transform_filter(weight, tile)
    n = weight.shape[3]
    dy = dy.astype(dtype, copy=False)
    dbias = dy.sum(axis=(0, 1, 2))
    du = np.zeros_like(u) if need_weight_grad else None
    dxp = np.zeros((x.shape[0], *geo.plane, geo.c), dtype=dtype) if need_input_grad else None
    step = geo.images_per_chunk(max(geo.c, n))
    for start in range(0, x.shape[0], step):
        chunk = slice(start, start + step)
        dm = _output_tile_grads(dy[chunk], geo, at2)                      # ((m+2)^2, tiles, N)
        if need_weight_grad:
            du += np.matmul(geo.input_tiles(x[chunk], bt2).transpose(0, 2, 1), dm)
        if need_input_grad:
            dtiles = bt2.T @ np.matmul(dm, u.transpose(0, 2, 1)).reshape(bt2.shape[0], -1)
            _scatter_tiles(dxp[chunk], dtiles, geo)
    dweight = (g2.T @ du.reshape(g2.shape[0], -1)).reshape(weight.shape) if need_weight_grad else None
    dx = dxp[:, geo.top:geo.top + geo.h, geo.left:geo.left + geo.w] if need_input_grad else None
    return dx, dweight, dbias


def _output_tile_grads(dy: np.ndarray, geo: _Geometry, at2: np.ndarray) -> np.ndarray:
    """``dM = (A^T ⊗ A^T)^T dY`` for every output tile (zero beyond the output's edge)."""
    m, n, images = geo.tile, dy.shape[3], dy.shape[0]
    padded = np.zeros((images, geo.th * m, geo.tw * m, n), dtype=dy.dtype)
    padded[:, :geo.out_h, :geo.out_w] = dy
    tiles = np.ascontiguousarray(padded.reshape(images, geo.th, m, geo.tw, m, n).transpose(2, 4, 0, 1, 3, 5))
    return (at2.T @ tiles.reshape(m * m, -1)).reshape(at2.shape[1], -1, n)


def _scatter_tiles(dxp: np.ndarray, dtiles: np.ndarray, geo: _Geometry) -> None:
    """Add each (m+2) x (m+2) tile gradient back where the tile was read (tiles overlap by 2)."""
    a, m = geo.tile + 2, geo.tile
    tiles = dtiles.reshape(a, a, dxp.shape[0], geo.th, geo.tw, geo.c)
    for p in range(a):
        for q in range(a):
            dxp[:, p:p + geo.th * m:m, q:q + geo.tw * m:m] += tiles[p, q]
