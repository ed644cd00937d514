"""The Dataset protocol, in-memory ArrayDataset, subsets, splits and whole-array access.

A dataset is anything with ``len(ds)``, ``ds[i] -> (image, label)`` where the image is
(H, W, C) float32 and the label an int, and ``ds.classes`` (label -> name). Datasets that
know their labels without reading images also expose ``ds.labels`` (int64, shape (N,)),
which :func:`split` uses for stratification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from cnnkit.errors import ConfigError, DataError
from cnnkit.data.transforms import Transform, apply_transform


@runtime_checkable
class Dataset(Protocol):
    """What the batching and training code needs from a data set."""

    classes: list[str]

    def __len__(self) -> int:
        """Number of examples."""

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """The example ``index`` as (image (H, W, C) float32, label)."""


def _check_labels(y, n: int, classes: list[str] | None, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: `y` must be a 1-D array with one label per image "
                        f"(shape ({n},)); received y.shape={y.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise DataError(f"{where}: `y` must hold integer class indices; received dtype "
                            f"{y.dtype}. Convert one-hot labels with y.argmax(axis=1).")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0; received a label {int(y.min())}.")
    if classes is not None and y.size and y.max() >= len(classes):
        raise DataError(f"{where}: label {int(y.max())} has no name in `classes` "
                        f"({len(classes)} names); give one name per class.")
    return y


class ArrayDataset:
    """A data set held in memory: images ``x`` (N, H, W, C) and integer labels ``y`` (N,).

    ``x`` keeps its dtype (a uint8 CIFAR stays 4x smaller than float32) and each image is
    returned as float32. ``classes`` defaults to ``["0", ..., str(max(y))]``. ``transform``
    (``t(img, rng=None)``) is applied to each image returned by ``ds[i]``.
    """

    def __init__(self, x, y, classes: Sequence[str] | None = None,
                 transform: Transform | None = None):
        x = np.asarray(x)
        if x.ndim != 4:
            hint = (" Add a channel axis with x[..., None] for grey images."
                    if x.ndim == 3 else "")
            raise DataError("ArrayDataset: `x` must have shape (N, H, W, C), channels last; "
                            f"received x.shape={x.shape}.{hint}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DataError(f"ArrayDataset: `x` must be numeric; received dtype {x.dtype}.")
        names = None if classes is None else [str(c) for c in classes]
        self.y = _check_labels(y, len(x), names, "ArrayDataset")
        self.x = x
        if names is None:
            names = [str(i) for i in range(int(self.y.max()) + 1 if self.y.size else 0)]
        self.classes = names
        if transform is not None and not callable(transform):
            raise ConfigError(f"ArrayDataset: `transform` must be callable; received {transform!r}.")
        self.transform = transform

    @property
    def labels(self) -> np.ndarray:
        """All labels, int64 (N,)."""
        return self.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        img = self.x[_check_index(index, len(self))].astype(np.float32)
        if self.transform is not None:
            img = apply_transform(self.transform, img)
        return img, int(self.y[index])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images as one float32 (N, H, W, C) array and labels int64 (N,), transformed."""
        if self.transform is None:
            return self.x.astype(np.float32), self.y.copy()
        return to_arrays(self)

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image_shape={self.x.shape[1:]}, "
                f"classes={len(self.classes)})")


def _check_index(index, n: int) -> int:
    if not isinstance(index, int | np.integer):
        raise DataError(f"dataset index must be an int; received {index!r}. "
                        "Use subset(dataset, indices) to select several examples.")
    if not -n <= index < n:
        raise IndexError(f"dataset index {index} is out of range for {n} examples")
    return int(index)


class Subset:
    """A view of ``dataset`` restricted to ``indices`` (in that order)."""

    def __init__(self, dataset: Dataset, indices):
        self.dataset = dataset
        self.indices = _check_indices(indices, len(dataset))
        self.classes = list(dataset.classes)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the selected examples, int64."""
        return labels_of(self.dataset)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.dataset[int(self.indices[_check_index(index, len(self))])]

    def __repr__(self) -> str:
        return f"Subset(n={len(self)}, of={self.dataset!r})"


def _check_indices(indices, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == np.bool_:
        if idx.shape != (n,):
            raise DataError(f"subset: a boolean mask needs shape ({n},); received {idx.shape}.")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise DataError(f"subset: `indices` must be a 1-D array of ints or a boolean mask; "
                        f"received shape {idx.shape}, dtype {idx.dtype}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise DataError(f"subset: index {bad} is out of range for a data set of {n} examples.")
    return np.where(idx < 0, idx + n, idx)


def subset(dataset: Dataset, indices) -> Dataset:
    """The examples at ``indices`` (ints or a boolean mask): an ArrayDataset stays one."""
    if isinstance(dataset, ArrayDataset):
        idx = _check_indices(indices, len(dataset))
        return ArrayDataset(dataset.x[idx], dataset.y[idx], dataset.classes, dataset.transform)
    return Subset(dataset, indices)


def labels_of(dataset: Dataset) -> np.ndarray:
    """All labels as int64 (N,), from ``dataset.labels`` when present (no image is read)."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def split(dataset: Dataset, fraction: float = 0.2, seed: int | np.random.Generator = 0,
          stratify: bool = True) -> tuple[Dataset, Dataset]:
    """Split into (rest, held_out) with ``fraction`` of the examples held out.

    With ``stratify`` each class is split in the same proportion (rounded per class), so
    a rare class is not lost from the held-out part. The same seed gives the same split.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"Invalid value for argument `fraction`: expected a number strictly "
                          f"between 0 and 1; received fraction={fraction!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = len(dataset)
    held = np.zeros(n, dtype=bool)
    if stratify:
        labels = labels_of(dataset)
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            k = int(round(fraction * len(members)))
            held[rng.choice(members, size=k, replace=False)] = True
    else:
        held[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
    return subset(dataset, ~held), subset(dataset, held)


def to_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every example stacked: images float32 (N, H, W, C) and labels int64 (N,).

    Meant for small data sets that fit in memory; images must all share one shape.
    """
    if isinstance(dataset, ArrayDataset) and dataset.transform is None:
        return dataset.arrays()
    n = len(dataset)
    if n == 0:
        raise DataError("to_arrays: the data set is empty; there is nothing to stack.")
    first, _ = dataset[0]
    x = np.empty((n, *np.shape(first)), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        img, label = dataset[i]
        if np.shape(img) != x.shape[1:]:
            raise DataError(f"to_arrays: example {i} has shape {np.shape(img)} but example 0 "
                            f"has {x.shape[1:]}; give the data set a size or a resize transform.")
        x[i], y[i] = img, label
    return x, y
