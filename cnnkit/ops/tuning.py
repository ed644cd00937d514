"""Every measured constant of the kernels, in one place, with the measurement that set it.

None of these changes a result beyond rounding order: they choose an algorithm (the automatic
choice of :func:`cnnkit.ops.conv.choose_algorithm`) or cut work into blocks and parts. Kernels
read them as ``tuning.NAME`` when they run, so a test may lower one (``monkeypatch.setattr``)
to make a small input take the path a large one would. Re-measure with
``python -m benchmarks.conv_paths`` and ``make bench`` on a quiet machine before changing one.
"""

from __future__ import annotations

# ----------------------------------------------------------------- the automatic convolution choice

#: Winograd pays when its per-position products are large enough. Measured with
#: ``python -m benchmarks.conv_paths`` (2 cores): with its transformed filters cached, F(4x4)
#: forward wins from about 32 output tiles and F(2x2) below; but the cache costs 4x (F(2x2):
#: 1.8x) the layer's weights in memory, so with fewer than 64 tiles (VGG16's conv4 and conv5
#: at batch 1) the GEMM path runs instead, keeping VGG16's inference peak near weights plus
#: activations. The backward, which also forms ``(m+2)^2`` weight-gradient products, wins from
#: about 128 tiles. Below 16 input or output channels the products are too thin to win.
WINOGRAD_MIN_CHANNELS = 16
FORWARD_F4_MIN_TILES = 64
BACKWARD_F4_MIN_TILES = 128

# ----------------------------------------------------------------- GEMM, NumPy reference (ops/gemm.py)

#: Numbers in one im2col buffer (64 MB of float32); always at least one image.
GEMM_CHUNK_ELEMENTS = 1 << 24

# ----------------------------------------------------------------- GEMM, compiled (ops/gemm_fast.py)

#: Column numbers in one block: a block and its product stay in a core's 2 MiB L2 cache.
GEMM_BLOCK_ELEMENTS = 1 << 17
#: Fewer rows than this make the product too small for BLAS, whatever the column width.
GEMM_MIN_BLOCK_ROWS = 256
#: Windows of at most this many numbers (``Kh*Kw*C``) get an im2col kernel compiled for their
#: size, whose loops unroll (measured 3x faster on 3x3x3 windows, :mod:`cnnkit.ops.gemm_kernels`).
MAX_UNROLLED_WINDOW = 64

# ----------------------------------------------------------------- Winograd, NumPy reference (ops/winograd.py)

#: Blocks of tiles: small enough that a block's transformed tiles stay in cache between the
#: steps (about WINOGRAD_CHUNK_ELEMENTS numbers), large enough for efficient matrix products
#: (at least WINOGRAD_CHUNK_MIN_TILES tiles). Measured with benchmarks/conv_paths.py.
WINOGRAD_CHUNK_ELEMENTS = 1 << 19
WINOGRAD_CHUNK_MIN_TILES = 512

# ----------------------------------------------------------------- Winograd F(4x4), compiled (ops/winograd_fast.py)

#: Transformed numbers in one block's buffer, ``36 * tiles * channels`` (1 MiB of float32): the
#: two buffers a step reads and writes fit a core's 2 MiB L2 cache. Timed from 2^15 to 2^21 on
#: the small network's layers: 2^17 and 2^18 were fastest.
WINOGRAD_BLOCK_ELEMENTS = 1 << 18
#: Fewer tiles than this make the per-position products too small for BLAS to be efficient.
WINOGRAD_MIN_BLOCK_TILES = 16
#: Transformed filters larger than this (bytes) are shared by position. Timed on VGG16's and the
#: small network's layers: by block wins up to 2.4 MB (128 x 128 channels; U then comes from the
#: shared L3 cache), by position from 4.7 MB (128 x 256) backward and 18.9 MB both ways.
MAX_SHARED_FILTER_BYTES = 4 << 20
#: Tiles in one block when sharing by position: each position's product reads its slice of U
#: once per block, so blocks are large; the transforms run in the calling thread.
POSITION_BLOCK_TILES = 256

# ----------------------------------------------------------------- depthwise convolution (ops/depthwise.py)

#: Output numbers in one block of rows, whose Kh*Kw tap passes then run in cache. Not measured
#: yet (no benchmark of it has run): chosen so that a block's output, its scratch product and its
#: input rows (about 3 x 256 KiB of float32) fit a core's 2 MiB L2 cache, as GEMM_BLOCK_ELEMENTS
#: does, while each NumPy call still covers 64 Ki numbers. Measure before relying on it.
DEPTHWISE_BLOCK_ELEMENTS = 1 << 16

# ----------------------------------------------------------------- matrix products over the pool (ops/products.py)

#: Below this many multiply-adds, one call is faster than waking the pool.
MIN_PARALLEL_MACS = 1 << 21
#: A split keeps at least this many rows or columns per part.
MIN_PART = 32

# ----------------------------------------------------------------- sums over rows (ops/reduce.py)

#: Rows added side by side in the first pass of ``sum_rows``: long inner loops for NumPy, short
#: sums per lane (this one sets the order of the additions, so it changes the last bits).
SUM_LANES = 64
