"""Standard data set files: CIFAR-10/100 (python version) and MNIST (IDX).

Nothing is downloaded: point the functions at the extracted archives.

- CIFAR-10, ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``
  and ``batches.meta``. CIFAR-100, ``cifar-100-python/``: ``train``, ``test``, ``meta``.
  Each batch is a pickled dict with ``data`` (N, 3072) uint8, each row the 1024 red,
  then green, then blue pixels of a 32x32 image, and ``labels`` (CIFAR-10) or
  ``fine_labels``/``coarse_labels`` (CIFAR-100). They are read with a restricted
  unpickler that cannot run code (see ``_safe_pickle``).
- MNIST (and Fashion-MNIST): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``.

Images are kept as uint8 in the returned ArrayDataset and served as float32 0-255.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from cnnkit.errors import ConfigError, DataError
from cnnkit.data._safe_pickle import load_data_pickle
from cnnkit.data.dataset import ArrayDataset

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
MNIST_CLASSES = [str(d) for d in range(10)]
# IDX type codes (LeCun's format description): data is big-endian after the header.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_dir(root: str | os.PathLike, subdir: str, marker: str, what: str) -> Path:
    """``root`` or ``root/subdir``, whichever holds ``marker``."""
    root = Path(root)
    for candidate in (root, root / subdir):
        if (candidate / marker).is_file():
            return candidate
    raise DataError(f"{what}: no {marker!r} in {str(root)!r} or {str(root / subdir)!r}. "
                    f"Download the python version from {CIFAR_URL} and pass the folder "
                    f"it extracts to ({subdir}).")


def _get(d, key: str, path: Path):
    """``d[key]`` where keys may be str or bytes (files written by Python 2 or 3)."""
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict; found {type(d).__name__}.")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key {key!r}; found keys "
                    f"{sorted(str(k) for k in d)}. Is this a CIFAR python-version file?")


def _names(values, path: Path, key: str) -> list[str]:
    if not isinstance(values, list | tuple):
        raise DataError(f"{path}: {key!r} must be a list of names; found {type(values).__name__}.")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels int64 (N,) from one pickled batch."""
    d = load_data_pickle(path)
    data = np.asarray(_get(d, "data", path))
    labels = np.asarray(_get(d, label_key, path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not np.issubdtype(data.dtype, np.integer):
        raise DataError(f"{path}: 'data' must be an integer array of shape (N, 3072); "
                        f"found shape {data.shape}, dtype {data.dtype}.")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {label_key!r} must hold {len(data)} integer labels; found "
                        f"shape {labels.shape}, dtype {labels.dtype}.")
    # Rows are channel-major (all red, then green, then blue): go to (N, H, W, C).
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _cifar(folder: Path, files: list[str], label_key: str,
           classes: list[str]) -> ArrayDataset:
    parts = []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR: missing batch file {str(path)!r}; the extracted archive "
                            f"has {', '.join(files)}. Download it again from {CIFAR_URL}.")
        parts.append(_cifar_batch(path, label_key))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(x, y, classes=classes)


def cifar10(root: str | os.PathLike, train: bool = True) -> ArrayDataset:
    """CIFAR-10 from its python-version folder: 50,000 train or 10,000 test 32x32x3 images."""
    folder = _find_dir(root, "cifar-10-batches-py", "batches.meta", "cifar10")
    meta_path = folder / "batches.meta"
    classes = _names(_get(load_data_pickle(meta_path), "label_names", meta_path),
                     meta_path, "label_names")
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _cifar(folder, files, "labels", classes)


def cifar100(root: str | os.PathLike, train: bool = True, label: str = "fine") -> ArrayDataset:
    """CIFAR-100 from its python-version folder; ``label`` picks the 100 "fine" or 20 "coarse" classes."""
    if label not in ("fine", "coarse"):
        raise ConfigError("Invalid value for argument `label`: expected 'fine' (100 classes) "
                          f"or 'coarse' (20 superclasses); received label={label!r}.")
    folder = _find_dir(root, "cifar-100-python", "meta", "cifar100")
    meta_path = folder / "meta"
    key = f"{label}_label_names"
    classes = _names(_get(load_data_pickle(meta_path), key, meta_path), meta_path, key)
    return _cifar(folder, ["train" if train else "test"], f"{label}_labels", classes)


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST's format), plain or gzipped, into a native-endian array.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32; the data follows, big-endian, C order.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
                raise DataError(f"{path}: not an IDX file (header bytes {head!r}; expected "
                                "0x00 0x00, a type code in 08/09/0B/0C/0D/0E, the rank).")
            dtype, ndim = np.dtype(_IDX_TYPES[head[2]]), head[3]
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: IDX header is cut short (rank {ndim}).")
            shape = struct.unpack(f">{ndim}I", dims_raw)
            expected = math.prod(shape) * dtype.itemsize
            # Read one byte more than needed so a file longer than its header says is caught,
            # and never more, so a lying header cannot make us inflate a gzip bomb.
            data = f.read(expected + 1)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) != expected:
        raise DataError(f"{path}: the header promises shape {shape} of {dtype.name} "
                        f"({expected} bytes) but the file holds "
                        f"{'more' if len(data) > expected else len(data)} data bytes.")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    """``stem`` in root, root/raw or root/MNIST/raw, with '-idx' or '.idx', optional .gz."""
    names = [stem, stem.replace("-idx", ".idx")]
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in names:
            for suffix in ("", ".gz"):
                if (folder / (name + suffix)).is_file():
                    return folder / (name + suffix)
    raise DataError(f"mnist: no {stem!r} (or {stem}.gz) in {str(root)!r}; expected the four "
                    "IDX files of MNIST (train-*/t10k-* images-idx3 and labels-idx1).")


def mnist(root: str | os.PathLike, train: bool = True) -> ArrayDataset:
    """MNIST from its IDX files: 60,000 train or 10,000 test 28x28x1 images, classes "0".."9"."""
    root = Path(root)
    prefix = "train" if train else "t10k"
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W); found "
                        f"{images.dtype} {images.shape}.")
    if labels.shape != (len(images),):
        raise DataError(f"{labels_path}: expected {len(images)} labels (one per image in "
                        f"{images_path.name}); found shape {labels.shape}.")
    if labels.size and labels.max() >= len(MNIST_CLASSES):
        raise DataError(f"{labels_path}: label {int(labels.max())} is not a digit 0..9.")
    return ArrayDataset(images[..., None], labels.astype(np.int64), classes=MNIST_CLASSES)
