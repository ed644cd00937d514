"""``cnnkit report RUN_DIR``: one self-contained HTML page for a training or transfer run.

The page holds the run's settings, the final metrics, the learning curves, the confusion
matrix, the first-layer filters and the model summary. Pictures are embedded as base64 PNG
data URIs and the style sheet is inline, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import CnnkitError, DataError
from ..io import atomic_open
from ._figure import conv_layers, matplotlib_available, png_bytes
from .confusion import confusion
from .curves import curves
from .filters import filters
from .inputs import load_model, load_test_data

#: the ``id`` of each section, in page order
SECTIONS = ("run", "metrics", "curves", "confusion", "filters", "summary")
REPORT_FILE = "report.html"

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #d0d5de; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e4e7ed; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #e4e7ed; }
.note { color: #6b7385; font-style: italic; }
"""


def write_report(run_dir: str | os.PathLike, model=None, data=None, out: str | os.PathLike | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run's ``report.json`` and return its path.

    ``model`` defaults to ``RUN_DIR/model.safetensors``; ``data`` (the confusion matrix's data)
    to the test split of the data the run names.
    """
    folder = Path(run_dir)
    record = _read_record(folder)
    model = model if model is not None else load_model(folder)
    page = render_report(record, model, data if data is not None else _test_data(record, model))
    target = Path(out) if out is not None else folder / REPORT_FILE
    with atomic_open(target, "w") as handle:
        handle.write(page)
    return target


def report_after_run(run_dir: str | os.PathLike, model=None, data=None) -> Path | None:
    """The end-of-run hook of ``cnnkit train`` and ``cnnkit transfer``: write the HTML report when
    matplotlib is installed and return its path; return None (and draw nothing) when it is not."""
    if not matplotlib_available():
        return None
    return write_report(run_dir, model=model, data=data)


def render_report(record: Mapping, model, data) -> str:
    """The HTML page for a run record (the content of ``report.json``), its model and its test data."""
    name = html.escape(str(record.get("model", model.name)))
    source = html.escape(str(record.get("data", "")))
    body = [
        f"<h1>cnnkit run: {name}{f' on {source}' if source else ''}</h1>",
        _section("run", "Run", _key_values(_settings(record))),
        _section("metrics", "Final metrics", _metrics_table(record)),
        _section("curves", "Learning curves", _curves_html(record)),
        _section("confusion", "Confusion matrix", _confusion_html(model, data)),
        _section("filters", "First-layer filters", _filters_html(model)),
        _section("summary", "Model summary", _summary_html(record.get("summary") or model.summary(format="dict"))),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>cnnkit report: {name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------- inputs

def _read_record(folder: Path) -> dict:
    path = folder / "report.json"
    if not path.is_file():
        raise DataError(f"report: {str(folder)!r} has no report.json; pass a run folder written by "
                        f"`cnnkit train` or `cnnkit transfer`")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"report: {str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise DataError(f"report: {str(path)!r} must hold a JSON object; received {type(record).__name__}")
    return record


def _test_data(record: Mapping, model):
    """The run's test split, or the reason it cannot be had (shown in the confusion section)."""
    spec = record.get("data")
    if not isinstance(spec, str):
        return "the run records no data set"
    try:
        return load_test_data(spec, model, seed=int(record.get("seed", 0)))
    except CnnkitError as error:
        return f"the data {spec!r} could not be loaded: {error}"


# ---------------------------------------------------------------- sections

def _section(ident: str, title: str, content: str) -> str:
    return f'<section id="{ident}">\n<h2>{html.escape(title)}</h2>\n{content}\n</section>'


def _image(fig, alt: str, ident: str, dpi: int = 100) -> str:
    encoded = base64.b64encode(png_bytes(fig, dpi)).decode("ascii")
    return f'<img id="img-{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _settings(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _key_values(values: Mapping) -> str:
    if not values:
        return _note("no settings recorded")
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def _format_metric(name: str, value) -> str:
    if not isinstance(value, (int, float)):
        return html.escape(str(value))
    return f"{value:.2%}" if "accuracy" in name else f"{value:.4f}"


def _metrics_table(record: Mapping) -> str:
    """One row per metric; columns: training and validation at the last epoch, then test."""
    columns: dict[str, Mapping] = {}
    history = record.get("history")
    if isinstance(history, Mapping):
        metrics = history.get("history", {})
        epochs = history.get("epochs") or []
        last = {k: v[-1] for k, v in metrics.items() if v and k != "images_per_second"}
        suffix = f" (epoch {epochs[-1]})" if epochs else ""
        columns[f"training{suffix}"] = {k: v for k, v in last.items() if not k.startswith("val_")}
        columns[f"validation{suffix}"] = {k[4:]: v for k, v in last.items() if k.startswith("val_")}
    if isinstance(record.get("test"), Mapping):
        columns["test"] = record["test"]
    columns = {name: values for name, values in columns.items() if values}
    if not columns:
        return _note("the run records no metrics")
    names = list(dict.fromkeys(k for values in columns.values() for k in values))
    head = "<tr><th>metric</th>" + "".join(f'<th class="num">{html.escape(c)}</th>' for c in columns) + "</tr>"
    rows = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f'<td class="num">{_format_metric(name, values[name]) if name in values else "-"}</td>'
        for values in columns.values()) + "</tr>" for name in names)
    return f'<table id="final-metrics">{head}{rows}</table>'


def _curves_html(record: Mapping) -> str:
    history = record.get("history")
    if not history:
        return _note("the run records no per-epoch history")
    return _image(curves(record), "learning curves", "curves")


def _filters_html(model) -> str:
    if not conv_layers(model):
        return _note(f"{model.name} has no convolution layer")
    return _image(filters(model), "first-layer filters", "filters", dpi=140)


def _confusion_html(model, data) -> str:
    if isinstance(data, str):
        return _note(f"no confusion matrix: {data}")
    return _image(confusion(model, data), "confusion matrix", "confusion")


SUMMARY_COLUMNS = ("layer", "type", "output", "params", "mult-adds", "receptive field")


def _summary_html(summary: Mapping) -> str:
    head = "".join(f'<th{" class=num" if c in ("params", "mult-adds") else ""}>{c}</th>' for c in SUMMARY_COLUMNS)
    rows = []
    for row in summary.get("layers", []):
        field = "whole input" if row.get("whole_input") else "x".join(map(str, row.get("receptive_field", [])))
        cells = [html.escape(str(row.get("name"))), html.escape(str(row.get("type"))),
                 " x ".join(map(str, row.get("output_shape", [])))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
                    + f'<td class="num">{row.get("params", 0):,}</td><td class="num">{row.get("macs", 0):,}</td>'
                    + f"<td>{field}</td></tr>")
    totals = summary.get("totals", {})
    foot = (f"<p>Parameters: {totals.get('params', 0):,} (trainable {totals.get('trainable', 0):,}); "
            f"multiply-accumulates per image: {totals.get('macs', 0):,}</p>") if totals else ""
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>\n{foot}"
