"""Features computed once per image and kept on disk as memory-mapped ``.npy`` files.

A cache entry is keyed by a SHA-256 of three things, so a stale entry is never reused:

- the model *up to the node*: the class and configuration of each layer it depends on (in a
  graph also the nodes that connect them), the input shape, and the bytes of every parameter and
  buffer of those layers (a changed head does not invalidate the features below it; a changed
  convolution does);
- the node name and any reduction applied to the features (``pool_to``);
- the data: the image array's bytes for an in-memory data set; the file paths, sizes and
  modification times, image size and transform for an image folder; the parent's key and the
  indices for a subset; otherwise the bytes of every image read through the data set.

Entries are written through a temporary file renamed into place, so a crash leaves no half
entry behind, and read back with ``np.load(mmap_mode="r")``: training a classifier on them
pages in only what it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..data import ArrayDataset, ImageFolder, Subset, batches
from ..errors import ConfigError, DataError
from ..io import atomic_path
from .nodes import node_step

CACHE_VERSION = "1"
#: ``extractor(x, layers) -> [features of each layer]`` for one batch ``x``.
Extractor = Callable[[np.ndarray, Sequence[str]], list]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cnnkit/features`` (``~/.cache/cnnkit/features`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cnnkit" / "features"


def _hash_array(digest, array: np.ndarray, rows: int = 4096) -> None:
    array = np.asarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    for start in range(0, max(len(array), 1) if array.ndim else 1, rows):
        digest.update(np.ascontiguousarray(array[start:start + rows] if array.ndim else array).tobytes())


def model_key(model, layer: str) -> str:
    """Hash of the architecture and weights of ``model`` up to and including the node ``layer``."""
    needed = model.plan.needed([node_step(model, layer).output])
    steps = [model.plan.steps[position] for position in needed]
    blocks = list({id(step.layer): step.layer for step in steps}.values())   # a shared layer once
    config = model.get_config()
    architecture = {"layers": [config["layers"][model.index(block.name)] for block in blocks]}
    if "nodes" in config:   # a graph: how the layers connect, too
        architecture.update(inputs=config["inputs"], nodes=[config["nodes"][position] for position in needed])
    else:                   # a chain: its layers in order are the whole story (the key of every version)
        architecture.update(input_shape=config["input_shape"])
    digest = hashlib.sha256(f"cnnkit-features-{CACHE_VERSION}".encode())
    digest.update(json.dumps(architecture, sort_keys=True).encode())
    for block in blocks:
        state = {**{k: p.value for k, p in block.parameters().items()}, **block.buffers()}
        for name in sorted(state):
            digest.update(f"{block.name}.{name}".encode())
            _hash_array(digest, state[name])
    return digest.hexdigest()


def data_key(data) -> str:
    """Hash that changes whenever the images of ``data`` may have changed (see module doc)."""
    digest = hashlib.sha256(b"cnnkit-data")
    if isinstance(data, ArrayDataset) and data.transform is None:
        _hash_array(digest, data.x)
    elif isinstance(data, ImageFolder):
        digest.update(repr((data.size, data.transform)).encode())
        for path, _ in data.samples:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    elif isinstance(data, Subset):
        digest.update(data_key(data.dataset).encode())
        _hash_array(digest, data.indices)
    else:
        for index in range(len(data)):
            _hash_array(digest, data[index][0])
    return digest.hexdigest()


def cache_key(model, layer: str, data, pool_to: int | None = None, data_hash: str | None = None) -> str:
    """The cache entry name for features of ``data`` at ``layer`` of ``model``."""
    parts = [model_key(model, layer), layer, str(pool_to), data_hash or data_key(data)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def pool_features(features: np.ndarray, pool_to: int | None) -> np.ndarray:
    """Flatten ``(B, ...)`` features; a volume ``(B, H, W, C)`` with more than ``pool_to`` numbers is first
    average-pooled over a g x g grid of regions, g the largest with ``g*g*C <= pool_to`` (at least 1)."""
    if pool_to is not None and features.ndim == 4 and features[0].size > pool_to:
        _, height, width, channels = features.shape
        grid = max(1, min(height, width, int(np.sqrt(pool_to / channels))))
        rows = np.array_split(np.arange(height), grid)
        cols = np.array_split(np.arange(width), grid)
        cells = [features[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1].mean(axis=(1, 2)) for r in rows for c in cols]
        features = np.stack(cells, axis=1)
    return features.reshape(len(features), -1).astype(np.float32, copy=False)


def forward_collect(model, x: np.ndarray, layers: Sequence[str]) -> list[np.ndarray]:
    """One inference pass of ``x`` that returns the output of each named node."""
    if len(layers) == 1:
        return [model.features(x, layers[0], batch_size=len(x))]
    return model.features(x, list(layers), batch_size=len(x))


def extract(model, data, layers: str | Sequence[str], cache_dir: str | os.PathLike | None = "auto",
            batch_size: int = 64, pool_to: int | None = None,
            extractor: Extractor | None = None) -> dict[str, np.ndarray]:
    """Features of every image of ``data`` at each of the nodes ``layers``, flattened to ``(N, D)`` float32.

    Args:
        cache_dir: folder of the on-disk cache; ``"auto"`` is :func:`default_cache_dir`, ``None``
            keeps the features in memory only. Cached layers are read back memory-mapped and not
            recomputed; the network runs once per batch for all missing layers together.
        pool_to: average-pool volumes larger than this many numbers (see :func:`pool_features`).
        extractor: ``extractor(x, layers)`` computing the raw outputs of one batch (default
            :func:`forward_collect`); injectable to count or replace the network's work.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if len(data) == 0:
        raise DataError("extract: the data set is empty; there are no images to compute features of")
    for name in names:
        node_step(model, name)
    folder = None if cache_dir is None else Path(default_cache_dir() if cache_dir == "auto" else cache_dir)
    found: dict[str, np.ndarray] = {}
    keys: dict[str, Path] = {}
    if folder is not None:
        data_hash = data_key(data)
        keys = {n: folder / f"{cache_key(model, n, data, pool_to, data_hash)}.npy" for n in names}
        found = {n: hit for n in names if (hit := _read(keys[n], len(data))) is not None}
    missing = [n for n in names if n not in found]
    if missing:
        with ExitStack() as stack:
            def sink(name: str, shape: tuple[int, int]) -> np.ndarray:
                if folder is None:
                    return np.empty(shape, np.float32)
                folder.mkdir(parents=True, exist_ok=True)
                tmp = stack.enter_context(atomic_path(keys[name]))
                return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)

            computed = _compute(data, missing, batch_size, pool_to, sink, extractor or
                                (lambda x, wanted: forward_collect(model, x, wanted)))
            if folder is None:
                found.update(computed)
            else:
                for array in computed.values():
                    array.flush()
                del computed  # unmap before the temporary files are renamed into place
        if folder is not None:
            found.update({name: _read(keys[name], len(data)) for name in missing})
    return {name: found[name] for name in names}


def _compute(data, layers, batch_size, pool_to, sink, extractor) -> dict[str, np.ndarray]:
    """Stream batches through ``extractor`` into one ``(N, D)`` array per layer made by ``sink``."""
    if batch_size < 1:
        raise ConfigError(f"extract: batch_size must be at least 1; received batch_size={batch_size}")
    arrays: dict[str, np.ndarray] = {}
    row = 0
    for x, _ in batches(data, batch_size, shuffle=False, prefetch=1):
        for name, out in zip(layers, extractor(x, layers)):
            features = pool_features(np.asarray(out), pool_to)
            if name not in arrays:
                arrays[name] = sink(name, (len(data), features.shape[1]))
            arrays[name][row:row + len(x)] = features
        row += len(x)
    return arrays


def _read(path: Path, count: int) -> np.ndarray | None:
    """A cached entry memory-mapped, or None when absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array if array.ndim == 2 and len(array) == count else None
