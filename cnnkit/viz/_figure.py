"""What every picture shares: a matplotlib Figure without pyplot, saving, tiles and layer lookup.

matplotlib is an optional extra (``cnnkit[viz]``): it is imported here, lazily, and only when a
picture is drawn, so ``import cnnkit`` and ``import cnnkit.viz`` work without it.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np

from ..errors import CnnkitError, ConfigError
from ..io import atomic_path

FORMATS = {".png": "png", ".svg": "svg"}
#: the colour of the lines between tiles: a muted blue no grey filter pixel can have
SEPARATOR = (0.22, 0.32, 0.52)
INSTALL_HINT = "install it with `pip install cnnkit[viz]` (or `pip install matplotlib`)"


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches, detached from pyplot (no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CnnkitError(f"cnnkit.viz draws with matplotlib, which is not installed; {INSTALL_HINT}") from None
    return Figure(figsize=(width, height), layout="constrained")


def save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically, as PNG or SVG by the file's suffix; return the path."""
    target = Path(path)
    fmt = FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise ConfigError(f"save: the file name must end in {' or '.join(FORMATS)}; received {str(path)!r}")
    if not target.parent.is_dir():
        raise ConfigError(f"save: the folder of {str(path)!r} does not exist; create it first")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white")
    return target


def png_bytes(fig, dpi: int = 100) -> bytes:
    """``fig`` encoded as PNG, in memory."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def normalise(tile: np.ndarray) -> np.ndarray:
    """Stretch ``tile`` to [0, 1] so its structure is visible whatever its scale; a flat tile becomes 0.5."""
    tile = np.asarray(tile, dtype=np.float64)
    low, high = float(tile.min()), float(tile.max())
    if high - low < 1e-12:
        return np.full_like(tile, 0.5)
    return (tile - low) / (high - low)


def mosaic(tiles: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """Tiles ``(T, h, w, 3)`` in [0, 1] laid out ``columns`` wide with ``pad``-pixel separator lines."""
    count, h, w, _ = tiles.shape
    rows = -(-count // columns)
    image = np.empty((rows * (h + pad) + pad, columns * (w + pad) + pad, 3))
    image[...] = SEPARATOR
    for index in range(count):
        top, left = pad + (index // columns) * (h + pad), pad + (index % columns) * (w + pad)
        image[top:top + h, left:left + w] = tiles[index]
    return image


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image as (H, W, 3) in [0, 1] for display: RGB kept, grey repeated, other depths averaged."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != 3:
        image = image.mean(axis=-1, keepdims=True)
    return np.repeat(normalise(image), 3 // image.shape[-1], axis=-1)


def find_layer(model, layer, what: str):
    """The layer named (or numbered) ``layer`` of ``model``, with an error that lists the choices."""
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(model.layers) <= layer < len(model.layers):
            raise ConfigError(f"{what}: layer={layer} is out of range; {model.name} has {len(model.layers)} layers")
        return model.layers[layer]
    if isinstance(layer, str):
        return model[layer]
    raise ConfigError(f"{what}: layer must be a layer name such as {model.layer_names()[0]!r} or an index; "
                      f"received layer={layer!r}")


def conv_layers(model) -> list:
    """The layers that hold a 4-D ``weight`` (K_h, K_w, C, N): the convolutions."""
    return [layer for layer in model.layers
            if "weight" in layer.parameters() and layer.parameters()["weight"].value.ndim == 4]


def find_conv(model, layer, what: str):
    """The convolution ``layer`` (default: the first one) of ``model``."""
    convs = conv_layers(model)
    if layer is None:
        if not convs:
            raise ConfigError(f"{what}: {model.name} has no convolution layer")
        return convs[0]
    chosen = find_layer(model, layer, what)
    if chosen not in convs:
        raise ConfigError(f"{what}: layer {chosen.name!r} is a {type(chosen).__name__}, not a convolution; "
                          f"choose one of {[c.name for c in convs]}")
    return chosen


def grid_columns(count: int, max_columns: int = 16) -> int:
    """Columns for a near-square grid of ``count`` tiles, at most ``max_columns``."""
    return max(1, min(max_columns, int(np.ceil(np.sqrt(count)))))
