"""Winograd F(4x4, 3x3) with compiled tile transforms, block by block on the worker pool.

The same computation as :func:`cnnkit.ops.winograd.winograd_conv2d` (the reference, in pure
NumPy), ordered for the cache. The batch's output tiles are cut into blocks, and a block goes
through all three steps (input transform, 36 per-position matrix products, output transform)
while it is still in cache. The transforms are Numba kernels
(:mod:`cnnkit.ops.winograd_kernels`); the products are BLAS, one thread per worker. Two ways
to share the work, chosen by the size of the transformed filters ``U`` (36 x C x N):

* *by block* (``U`` fits in a core's cache: few channels): each worker takes whole blocks of
  about :data:`~cnnkit.ops.tuning.WINOGRAD_BLOCK_ELEMENTS` transformed numbers;
* *by position* (``U`` is larger than :data:`~cnnkit.ops.tuning.MAX_SHARED_FILTER_BYTES`, VGG's
  wide layers): blocks of :data:`~cnnkit.ops.tuning.POSITION_BLOCK_TILES` tiles go one after
  the other, and the workers split each block's 36 matrix products among them, so each reads
  its part of ``U`` once per block rather than all of it per small block.

The compiled ``winograd4`` row of the table in :mod:`cnnkit.ops.conv`, used when
:func:`cnnkit.ops.jit.enabled`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arithmetic import Geometry
from . import tuning
from . import winograd_kernels as _kernels
from .parts import deal, in_ranges, part_count
from .threads import num_threads, run_parallel


@dataclass(frozen=True)
class _Block:
    """``band_rows`` tile rows from ``first_row`` in each of ``images`` images from ``first_image``;
    ``band`` counts the bands of one image."""
    first_image: int
    images: int
    first_row: int
    band_rows: int
    tw: int
    band: int = 0

    @property
    def tiles(self) -> int:
        return self.images * self.band_rows * self.tw

    def args(self) -> tuple[int, int, int, int]:
        return self.first_image, self.first_row, self.band_rows, self.tw


class _Plan:
    """Tiles and blocks of a 3x3 stride-1 convolution of ``x_shape`` by ``filters`` filters."""

    def __init__(self, x_shape: tuple[int, ...], geometry: Geometry, filters: int, itemsize: int = 4):
        self.batch, self.h, self.w, self.c = x_shape
        self.n = filters
        self.top, self.left = geometry.top, geometry.left
        self.out_h, self.out_w = geometry.output_hw((self.h, self.w))
        self.th, self.tw = geometry.output_tiles((self.h, self.w), 4)
        self.workers = num_threads()
        self.by_position = (36 * self.c * filters * itemsize > tuning.MAX_SHARED_FILTER_BYTES
                            and self.workers > 1)
        self.blocks = self._cut(self._block_tiles())

    def _block_tiles(self) -> int:
        """Tiles wanted in a block: large when sharing by position; else cache-sized, and small
        enough that every worker gets at least two blocks."""
        if self.by_position:
            return tuning.POSITION_BLOCK_TILES
        total = self.batch * self.th * self.tw
        cache_sized = tuning.WINOGRAD_BLOCK_ELEMENTS // (36 * max(self.c, self.n))
        return max(tuning.WINOGRAD_MIN_BLOCK_TILES, min(cache_sized, -(-total // (2 * self.workers))))

    def _cut(self, wanted: int) -> list[_Block]:
        """Whole images per block when images are small, else bands of tile rows of one image."""
        per_image = self.th * self.tw
        if wanted >= per_image:
            step = wanted // per_image
            return [_Block(first, min(step, self.batch - first), 0, self.th, self.tw)
                    for first in range(0, self.batch, step)]
        rows = max(1, wanted // self.tw)
        return [_Block(image, 1, first, min(rows, self.th - first), self.tw, band)
                for image in range(self.batch) for band, first in enumerate(range(0, self.th, rows))]

    def max_tiles(self) -> int:
        return max(block.tiles for block in self.blocks)

    def waves(self) -> list[list[_Block]]:
        """Blocks that may scatter into the input gradient at the same time: bands of one image
        overlap their neighbours by two rows, so even and odd bands go in separate waves."""
        waves = ([block for block in self.blocks if block.band % 2 == parity] for parity in (0, 1))
        return [wave for wave in waves if wave]


def _parts(blocks: list, plan: _Plan) -> int:
    """Parts that ``blocks`` are dealt to (:func:`~cnnkit.ops.parts.deal`): one per worker, or
    one in the calling thread when sharing by position."""
    return 1 if plan.by_position else part_count(len(blocks), plan.workers)


def _products(plan: _Plan):
    """``multiply(a, b, out, add=False)``: ``out[p] (+)= a[p] @ b[p]`` for the 36 positions.

    By block, in the calling worker; by position, split over the pool (each worker owns its
    positions, so adding into ``out`` is safe)."""
    if not plan.by_position:
        def in_this_thread(a, b, out, add=False):
            if add:
                out += np.matmul(a, b)    # 36 x C x N: small in this mode
            else:
                np.matmul(a, b, out=out)
        return in_this_thread

    def position_range(a, b, out, add):
        if not add:
            np.matmul(a, b, out=out)
            return
        product = np.empty(out.shape[1:], dtype=out.dtype)   # one position at a time: stays in cache
        for position in range(out.shape[0]):
            np.matmul(a[position], b[position], out=product)
            out[position] += product

    def by_position(a, b, out, add=False):
        def work(lo: int, hi: int) -> None:
            position_range(a[lo:hi], b[lo:hi], out[lo:hi], add)
        in_ranges(work, 36, min(plan.workers, 36))
    return by_position


class _Buffers:
    """A worker's scratch: three buffers of ``36 * tiles * channels`` numbers, viewed as needed."""

    def __init__(self, plan: _Plan, dtype):
        size = 36 * plan.max_tiles() * max(plan.c, plan.n)
        self.flat = [np.empty(size, dtype=dtype) for _ in range(3)]

    def view(self, which: int, positions: int, tiles: int, channels: int) -> np.ndarray:
        """Buffer ``which`` as a contiguous ``(positions, tiles, channels)`` array."""
        return self.flat[which][:positions * tiles * channels].reshape(positions, tiles, channels)


def _lines(pass_kernel, src: np.ndarray, dst: np.ndarray, lines: int, in_step: int, in_stride: int,
           out_step: int, out_stride: int, *flags) -> None:
    """Run a 1-D transform pass over position-major buffers flattened to (positions, n)."""
    pass_kernel(src.reshape(src.shape[0], -1), dst.reshape(dst.shape[0], -1), lines, in_step, in_stride,
                out_step, out_stride, *flags)


def _input_transform(x, plan, block, buffers, into: int, spare: int) -> np.ndarray:
    """``V = (B^T ⊗ B^T) d`` of the block's input tiles, (36, tiles, C), in buffer ``into``."""
    d = buffers.view(into, 36, block.tiles, plan.c)
    rows = buffers.view(spare, 36, block.tiles, plan.c)
    _kernels.gather_input_tiles(x, plan.top, plan.left, *block.args(), d)
    _lines(_kernels.bt_lines, d, rows, 6, 1, 6, 1, 6, False)   # down each column j: rows j + 6*i
    _lines(_kernels.bt_lines, rows, d, 6, 6, 1, 6, 1, False)   # along each row i: rows 6*i + j
    return d


def compiled_winograd_conv2d(x: np.ndarray, u: np.ndarray, bias: np.ndarray | None, geometry: Geometry,
                             relu: bool = False) -> np.ndarray:
    """3x3 stride-1 convolution of ``x`` (B, H, W, C) given transformed filters ``u`` (36, C, N)
    (:func:`cnnkit.ops.winograd.transform_filter`), followed by ReLU when ``relu``."""
    x = np.ascontiguousarray(x)
    n = u.shape[2]
    plan = _Plan(x.shape, geometry, n, x.dtype.itemsize)
    y = np.empty((plan.batch, plan.out_h, plan.out_w, n), dtype=x.dtype)
    bias = np.zeros(n, x.dtype) if bias is None else bias.astype(x.dtype, copy=False)
    parts = _parts(plan.blocks, plan)
    multiply = _products(plan)

    def work(part: int) -> None:
        buffers = _Buffers(plan, x.dtype)
        for block in deal(plan.blocks, part, parts):
            v = _input_transform(x, plan, block, buffers, 0, 1)
            m = buffers.view(1, 36, block.tiles, n)
            multiply(v, u, m)
            cols = buffers.view(0, 24, block.tiles, n)
            out = buffers.view(2, 16, block.tiles, n)
            _lines(_kernels.at_lines, m, cols, 6, 1, 6, 1, 6)     # A^T down each column: rows j + 6*i
            _lines(_kernels.at_lines, cols, out, 4, 6, 1, 4, 1)   # A^T along each row: rows 4*i + j
            _kernels.scatter_output_tiles(out, bias, relu, *block.args(), y)

    run_parallel(work, parts)
    return y


def compiled_winograd_conv2d_backward(dy: np.ndarray, x: np.ndarray, u: np.ndarray, geometry: Geometry,
                                      need_input_grad: bool = True, need_weight_grad: bool = True,
                                      relu_output: np.ndarray | None = None):
    """``(dx, du, dbias)`` of :func:`compiled_winograd_conv2d`: ``du`` is the gradient of the
    transformed filters (36, C, N) (:func:`cnnkit.ops.winograd.filter_gradient` turns it into the
    filters'); either of ``dx`` and ``du`` is None when not needed. ``relu_output`` is the output
    of a fused ReLU: ``dy`` then counts only where it is positive."""
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy.astype(x.dtype, copy=False))
    mask = np.empty((0, 0, 0, 0), x.dtype) if relu_output is None else np.ascontiguousarray(relu_output)
    c, n = u.shape[1:]
    plan = _Plan(x.shape, geometry, n, x.dtype.itemsize)
    multiply = _products(plan)
    dx = np.zeros(x.shape, dtype=x.dtype) if need_input_grad else None
    du = np.zeros(u.shape, dtype=x.dtype) if need_weight_grad else None
    u_t = u.transpose(0, 2, 1)

    def block_grads(block, buffers, partial, partial_bias) -> None:
        g = buffers.view(0, 16, block.tiles, n)
        block_bias = np.zeros(n, dtype=x.dtype)   # summed per block, then over blocks: less rounding
        _kernels.gather_output_tiles(dy, mask, *block.args(), g, block_bias)
        partial_bias += block_bias
        rows = buffers.view(1, 24, block.tiles, n)
        dm = buffers.view(0, 36, block.tiles, n)
        _lines(_kernels.at_adjoint_lines, g, rows, 4, 1, 4, 1, 4)    # A down each column: rows 4*p + j
        _lines(_kernels.at_adjoint_lines, rows, dm, 6, 4, 1, 6, 1)   # A along each row: rows 6*p + q
        if need_weight_grad:
            v = _input_transform(x, plan, block, buffers, 1, 2)
            multiply(v.transpose(0, 2, 1), dm, partial, add=True)
        if need_input_grad:
            dv = buffers.view(1, 36, block.tiles, c)
            multiply(dm, u_t, dv)
            cols = buffers.view(2, 36, block.tiles, c)
            _lines(_kernels.bt_lines, dv, cols, 6, 1, 6, 1, 6, True)   # B, the adjoint of B^T
            _lines(_kernels.bt_lines, cols, dv, 6, 6, 1, 6, 1, True)
            _kernels.add_input_tiles(dv, plan.top, plan.left, *block.args(), dx)

    dbias = np.zeros(n, dtype=x.dtype)
    for wave in plan.waves():
        parts = _parts(wave, plan)

        def work(part: int, wave=wave, parts=parts, alone=parts == 1):
            buffers = _Buffers(plan, x.dtype)
            # a part working alone adds straight into the totals
            partial = du if alone or not need_weight_grad else np.zeros(u.shape, dtype=x.dtype)
            partial_bias = dbias if alone else np.zeros(n, dtype=x.dtype)
            for block in deal(wave, part, parts):
                block_grads(block, buffers, partial, partial_bias)
            return None if alone else (partial, partial_bias)

        # partial sums are added in part order: the result does not depend on timing
        for partial, partial_bias in filter(None, run_parallel(work, parts)):
            dbias += partial_bias
            if need_weight_grad:
                du += partial
    return dx, du, dbias
