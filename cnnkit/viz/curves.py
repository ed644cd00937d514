"""Learning curves: loss and accuracy per epoch, training and validation, from a History or a run's logs."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

from ..errors import DataError
from ._figure import new_figure

#: the files of a run folder that hold the history, in order of preference
RUN_LOGS = ("metrics.jsonl", "metrics.csv", "report.json")
PANELS = (("loss", "loss"), ("accuracy", "accuracy"))


def load_history(source) -> tuple[list[int], dict[str, list[float]]]:
    """Epochs and every metric per epoch from a ``History``, its ``to_dict()``, a ``report.json``
    dict, or a path: ``metrics.csv``, ``metrics.jsonl``, ``report.json`` or a run folder holding one."""
    if hasattr(source, "history") and hasattr(source, "epochs"):
        return list(source.epochs), {k: list(v) for k, v in source.history.items()}
    if isinstance(source, Mapping):
        return _from_mapping(source, "history")
    return _from_path(Path(source))


def _from_mapping(data: Mapping, where: str) -> tuple[list[int], dict[str, list[float]]]:
    inner = data.get("history", data)
    if isinstance(inner, Mapping) and "history" in inner:
        inner_metrics, epochs = inner["history"], inner.get("epochs")
    else:
        inner_metrics, epochs = inner, data.get("epochs")
    if not isinstance(inner_metrics, Mapping) or "loss" not in inner_metrics:
        raise DataError(f"curves: {where} holds no per-epoch 'loss'; expected a History, metrics.csv, "
                        f"metrics.jsonl or a report.json with a 'history'")
    metrics = {str(k): [float(v) for v in values] for k, values in inner_metrics.items()}
    epochs = list(epochs) if epochs else list(range(1, len(metrics["loss"]) + 1))
    return epochs, metrics


def _from_path(path: Path) -> tuple[list[int], dict[str, list[float]]]:
    if path.is_dir():
        found = next((path / name for name in RUN_LOGS if (path / name).is_file()), None)
        if found is None:
            raise DataError(f"curves: the folder {str(path)!r} holds none of {RUN_LOGS}; pass a run folder "
                            f"written by `cnnkit train` or one of those files")
        path = found
    if not path.is_file():
        raise DataError(f"curves: no such file {str(path)!r}; pass metrics.csv, metrics.jsonl, report.json "
                        f"or a run folder")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix == ".jsonl":
        rows = [_json(line, path) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        data = _json(path.read_text(), path)
        return _from_mapping(data if isinstance(data, Mapping) else {}, repr(str(path)))
    else:
        raise DataError(f"curves: {str(path)!r} is not a metrics log; expected a .csv, .jsonl or .json file")
    return _from_rows(rows, path)


def _json(text: str, path: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"curves: {str(path)!r} is not valid JSON ({error})") from None


def _from_rows(rows: list, path: Path) -> tuple[list[int], dict[str, list[float]]]:
    if not rows or not all(isinstance(row, Mapping) and "loss" in row for row in rows):
        raise DataError(f"curves: {str(path)!r} has no per-epoch rows with a 'loss' column")
    keys = [k for k in rows[0] if k != "epoch"]
    metrics = {k: [_number(row.get(k)) for row in rows] for k in keys}
    epochs = [int(float(row["epoch"])) if row.get("epoch") not in (None, "") else i
              for i, row in enumerate(rows, start=1)]
    return epochs, metrics


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def curves(history_or_log, title: str | None = None):
    """Loss and accuracy per epoch, training (solid) and validation (dashed), as a Figure.

    ``history_or_log`` is anything :func:`load_history` reads.
    """
    epochs, metrics = load_history(history_or_log)
    panels = [(key, label) for key, label in PANELS if key in metrics or f"val_{key}" in metrics]
    fig = new_figure(4.2 * len(panels), 3.3)
    for position, (key, label) in enumerate(panels, start=1):
        axes = fig.add_subplot(1, len(panels), position)
        for name, style, colour in ((key, "-", "#1f77b4"), (f"val_{key}", "--", "#ff7f0e")):
            if name in metrics:
                axes.plot(epochs, metrics[name], style, color=colour, marker="o", markersize=3,
                          label="validation" if name.startswith("val_") else "training")
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.set_title(label, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        if len(epochs) < 12:
            axes.set_xticks(epochs)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
