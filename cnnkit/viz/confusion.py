"""The confusion matrix of a classifier on a data set, with class names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import labels_of
from ..errors import DataError
from ..train import as_dataset, predict
from ._figure import new_figure

#: above this many classes the counts are not written into the cells
ANNOTATE_UP_TO = 20


def class_names_of(model, data, classes: int) -> list[str]:
    """The data set's class names, else the model's (always for bare ``(x, y)`` arrays), else ``"0"..."K-1"``."""
    names = (None if isinstance(data, tuple) else getattr(data, "classes", None)) or model.meta.get("class_names")
    return [str(n) for n in names] if names and len(names) == classes else [str(i) for i in range(classes)]


def confusion_matrix(model, data, batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """Counts ``(K, K)``, rows the true class and columns the predicted one, and the K class names.

    ``data`` is a Dataset or an ``(x, y)`` pair of arrays.
    """
    dataset = as_dataset(data, "confusion: data")
    if len(dataset) == 0:
        raise DataError("confusion: the data set is empty; pass a Dataset or (x, y) with at least one example")
    truth = labels_of(dataset)
    predicted = predict(model, dataset, batch_size).argmax(axis=1)
    classes = int(model.output_shape[-1])
    if truth.max() >= classes:
        raise DataError(f"confusion: the data has label {int(truth.max())} but {model.name} predicts "
                        f"{classes} classes; use data with labels 0..{classes - 1}")
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts, class_names_of(model, data, classes)


def confusion(model, data, batch_size: int = 256, normalize: bool = False, title: str | None = None):
    """The confusion matrix of ``model`` on ``data`` as a Figure (rows: true class, columns: predicted)."""
    counts, names = confusion_matrix(model, data, batch_size)
    return confusion_figure(counts, names, normalize, title)


def confusion_figure(counts: np.ndarray, names: Sequence[str], normalize: bool = False,
                     title: str | None = None):
    """Draw a confusion matrix already counted."""
    classes = len(names)
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    side = min(max(3.6, 0.42 * classes + 1.6), 12.0)
    fig = new_figure(side + 0.8, side)
    axes = fig.add_subplot()
    image = axes.imshow(shown, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class" if normalize else "images")
    ticks = np.arange(classes)
    labels = [n if len(n) <= 14 else n[:13] + "…" for n in names]
    axes.set_xticks(ticks, labels, rotation=90 if classes > 10 or max(map(len, labels)) > 3 else 0, fontsize=8)
    axes.set_yticks(ticks, labels, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if classes <= ANNOTATE_UP_TO:
        threshold = shown.max() / 2
        for (row, col), value in np.ndenumerate(shown):
            text = f"{value:.2f}" if normalize else str(int(value))
            axes.text(col, row, text, ha="center", va="center", fontsize=7,
                      color="white" if value > threshold else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axes.set_title(title or f"confusion matrix: accuracy {accuracy:.1%} on {int(counts.sum())} images",
                   fontsize=10)
    return fig
