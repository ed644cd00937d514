"""The learned filters of a convolution as a grid of small images (the lecture's 96 11x11x3 filters)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._figure import find_conv, grid_columns, mosaic, new_figure, normalise

MODES = ("auto", "rgb", "mean", "channels")


def filter_tiles(model, layer: str | int | None = None, mode: str = "auto", max_filters: int = 64,
                 max_channels: int = 16) -> tuple[np.ndarray, int]:
    """The filters of ``layer`` as normalised tiles ``(T, K_h, K_w, 3)`` in [0, 1] and the grid's column count.

    Modes: ``"rgb"`` one colour tile per filter (a 3-channel input); ``"mean"`` one grey tile per
    filter, the mean over its input channels; ``"channels"`` one row per filter, one grey tile
    per input channel; ``"auto"`` is ``"rgb"`` for 3 input channels and ``"mean"`` otherwise.
    Each tile is stretched to [0, 1] on its own, so a filter's structure shows whatever its scale.
    """
    conv = find_conv(model, layer, "filters")
    weight = conv.parameters()["weight"].value            # (K_h, K_w, C, N)
    channels = weight.shape[2]
    mode = _resolve_mode(mode, channels, conv.name)
    if not isinstance(max_filters, int) or max_filters < 1:
        raise ConfigError(f"filters: max_filters must be an int >= 1; received max_filters={max_filters!r}")
    kernels = np.moveaxis(weight[..., :max_filters], -1, 0)   # (N, K_h, K_w, C)
    if mode == "rgb":
        tiles = np.stack([normalise(k) for k in kernels])
        return tiles, grid_columns(len(tiles))
    if mode == "mean":
        tiles = np.stack([normalise(k.mean(axis=-1)) for k in kernels])
        return np.repeat(tiles[..., None], 3, axis=-1), grid_columns(len(tiles))
    shown = min(channels, max_channels)
    tiles = np.stack([normalise(k[..., c]) for k in kernels for c in range(shown)])
    return np.repeat(tiles[..., None], 3, axis=-1), shown


def _resolve_mode(mode: str, channels: int, layer: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"filters: mode must be one of {MODES}; received mode={mode!r}")
    if mode == "auto":
        return "rgb" if channels == 3 else "mean"
    if mode == "rgb" and channels != 3:
        raise ConfigError(f"filters: mode='rgb' needs filters over 3 input channels; {layer} has {channels}; "
                          f"use mode='mean' or mode='channels'")
    return mode


def filters(model, layer: str | int | None = None, mode: str = "auto", max_filters: int = 64,
            max_channels: int = 16, tile_inches: float = 0.45):
    """A grid of the filters of convolution ``layer`` (default: the first) as a matplotlib Figure.

    See :func:`filter_tiles` for ``mode``; first-layer filters of an RGB network come out in
    colour, deeper ones as the mean over their input channels or one tile per channel.
    """
    conv = find_conv(model, layer, "filters")
    tiles, columns = filter_tiles(model, conv.name, mode, max_filters, max_channels)
    rows = -(-len(tiles) // columns)
    kh, kw, channels, count = conv.parameters()["weight"].value.shape
    fig = new_figure(max(3.0, columns * tile_inches + 0.4), max(1.6, rows * tile_inches * kh / kw + 0.6))
    axes = fig.add_subplot()
    axes.imshow(mosaic(tiles, columns), interpolation="nearest")
    axes.set_axis_off()
    shown = min(count, max_filters)
    per_channel = " (one row per filter, one tile per input channel)" if tiles.shape[0] > shown else ""
    axes.set_title(f"{conv.name}: {shown} of {count} filters, {kh}x{kw}x{channels}{per_channel}", fontsize=9)
    return fig
