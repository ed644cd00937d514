"""Time each convolution path of cnnkit on the shapes that matter, to set the automatic choice.

    python -m benchmarks.conv_paths            # prints a Markdown table of median milliseconds

The thresholds in ``cnnkit/ops/tuning.py`` (``WINOGRAD_MIN_CHANNELS``, ``FORWARD_F4_MIN_TILES``
and ``BACKWARD_F4_MIN_TILES``, which the automatic choice of ``cnnkit/ops/conv.py`` reads) come
from this table. Each path runs through the one entry, ``cnnkit.ops.conv2d`` with its
``algorithm=`` named, as a layer runs it: compiled when Numba is on (``CNNKIT_JIT=0`` times the
NumPy references), with the Winograd filters cached. Run it on a quiet machine.
"""

from __future__ import annotations

import statistics

import numpy as np

from benchmarks.worker import time_calls
from cnnkit.arithmetic import windows_2d
from cnnkit.ops import conv2d, conv2d_backward

SHAPES = [  # batch, size, input channels, filters: VGG16 at batch 1 and 8, the small net at 128, the digits net
    *[(b, s, c, n) for b in (1, 8) for s, c, n in [(224, 64, 64), (112, 128, 128), (56, 256, 256), (28, 512, 512),
                                                   (14, 512, 512)]],
    (128, 32, 32, 32), (128, 16, 64, 64), (128, 8, 128, 128), (32, 8, 16, 16), (32, 4, 32, 32),
]


def median_ms(fn, repeats: int = 5) -> float:
    return 1000 * statistics.median(time_calls(fn, repeats))


def row(batch: int, size: int, cin: int, cout: int) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, cin), dtype=np.float32)
    w = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
    dy = rng.standard_normal((batch, size, size, cout), dtype=np.float32)
    windows = windows_2d((size, size), 3, 1, 1, 1, "conv")
    cells = []
    for algorithm in ("gemm", "winograd2", "winograd4"):
        filters = {}   # a layer's cache of transformed filters: filled by the first (warm-up) call
        _, context = conv2d(x, w, None, windows, algorithm=algorithm, filter_cache=filters)
        cells.append(median_ms(lambda: conv2d(x, w, None, windows, algorithm=algorithm, filter_cache=filters)))
        cells.append(median_ms(lambda: conv2d_backward(dy, context)))
        del context
    tiles = batch * (-(-size // 4)) ** 2
    return f"| {batch} x {size}x{size}x{cin} -> {cout} | {tiles} | " + " | ".join(f"{c:.1f}" for c in cells) + " |"


def main() -> None:
    print("| shape | F(4x4) tiles | gemm fwd | gemm bwd | F(2x2) fwd | F(2x2) bwd | F(4x4) fwd | F(4x4) bwd |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in SHAPES:
        print(row(*shape), flush=True)


if __name__ == "__main__":
    main()
