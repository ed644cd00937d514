"""Activation maps: what each filter of a layer responds to in one image, with the image beside them."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ._figure import as_rgb, find_conv, find_layer, grid_columns, new_figure


def as_batch(model, image: np.ndarray, what: str) -> np.ndarray:
    """One image ``(H, W, C)`` (or a batch of one) checked against the model's input, as ``(1, H, W, C)``."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == len(model.input_shape) + 1 and x.shape[0] == 1:
        x = x[0]
    if x.shape != tuple(model.input_shape):
        raise ShapeError(f"{what}: the image must have the model's input shape {tuple(model.input_shape)}; "
                         f"received an array of shape {np.shape(image)}")
    return x[None]


def activation_maps(model, image: np.ndarray, layer: str | int | None = None, n: int = 16,
                    most_active: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The maps of ``layer`` for ``image``: ``(n, H2, W2)`` and the channel index of each.

    The first ``n`` channels, or with ``most_active`` the ``n`` with the largest mean activation.
    """
    chosen = find_conv(model, None, "activations") if layer is None else find_layer(model, layer, "activations")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"activations: n must be an int >= 1; received n={n!r}")
    out = model.features(as_batch(model, image, "activations"), chosen.name)[0]
    if out.ndim != 3:
        raise ConfigError(f"activations: layer {chosen.name!r} outputs a vector of shape {out.shape}, not "
                          f"maps; choose a convolution, activation or pooling layer before the flatten")
    order = np.argsort(-out.mean(axis=(0, 1)), kind="stable") if most_active else np.arange(out.shape[-1])
    picked = order[:n]
    return np.moveaxis(out[..., picked], -1, 0), picked


def activations(model, image: np.ndarray, layer: str | int | None = None, n: int = 16,
                most_active: bool = False, tile_inches: float = 0.9):
    """The activation maps of ``layer`` (default: the first convolution) for one image, as a Figure.

    One tile per channel (the first ``n``, or the ``n`` most active), all on one colour scale
    so that weak maps look weak; the input image is drawn on the left.
    """
    chosen = find_conv(model, None, "activations") if layer is None else find_layer(model, layer, "activations")
    maps, channels = activation_maps(model, image, chosen.name, n, most_active)
    columns = grid_columns(len(maps), 8)
    rows = -(-len(maps) // columns)
    fig = new_figure(tile_inches * (columns + rows) + 0.6, tile_inches * rows + 0.7)
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[rows] + [1] * columns)
    source = fig.add_subplot(grid[:, 0])
    source.imshow(as_rgb(as_batch(model, image, "activations")[0]), interpolation="nearest")
    source.set_title("input", fontsize=9)
    source.set_axis_off()
    top = max(float(maps.max()), 1e-12)
    low = min(float(maps.min()), 0.0)
    for index, (activation, channel) in enumerate(zip(maps, channels)):
        axes = fig.add_subplot(grid[index // columns, 1 + index % columns])
        axes.imshow(activation, cmap="viridis", vmin=low, vmax=top, interpolation="nearest")
        axes.set_title(f"#{channel}", fontsize=7, pad=2)
        axes.set_axis_off()
    which = "most active" if most_active else "first"
    fig.suptitle(f"{chosen.name}: {which} {len(maps)} of {chosen.output_shape[-1]} activation maps "
                 f"({chosen.output_shape[0]}x{chosen.output_shape[1]})", fontsize=10)
    return fig
