"""The receptive field a layer really has along its height, measured: which input rows each output
row's gradient reaches (the layer's weights set to ones, so no tap cancels another)."""

from __future__ import annotations

import numpy as np


def measured_rows(layer, height: int) -> list[tuple[int, int] | None]:
    """For each output row of ``layer`` built on ``(height, 1, 1)``: the first and last input row
    its value depends on, or None for a row that depends on no input (bias alone)."""
    layer.build((height, 1, 1), np.random.default_rng(0))
    if "weight" in layer.parameters():
        weight = layer.parameters()["weight"]
        weight.value = np.ones(weight.shape)
    y, context = layer.call(np.ones((1, height, 1, 1)), training=True)
    rows = []
    for o in range(y.shape[1]):
        dy = np.zeros_like(y)
        dy[0, o] = 1.0
        reached = np.flatnonzero(layer.call_backward(dy, context)[0, :, 0, 0])
        rows.append((int(reached[0]), int(reached[-1])) if reached.size else None)
    return rows


def measured_size(rows) -> int:
    """The widest field in pixels over the output rows."""
    return max(last - first + 1 for first, last in filter(None, rows))


def mean_centre(rows, units) -> float:
    """The mean centre, in input pixel coordinates (pixel i spans [i, i+1)), of the fields of ``units``."""
    return float(np.mean([(rows[o][0] + rows[o][1] + 1) / 2 for o in units]))
