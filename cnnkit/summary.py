"""`model.summary()`: the lecture's arithmetic per layer, as text, Markdown or JSON.

Every number comes from :mod:`cnnkit.arithmetic` through the layers' hooks; this module
only gathers and formats.
"""

from __future__ import annotations

import json

from .arithmetic import (OPTIMIZER_SLOTS, LayerVolumes, ReceptiveField, counted_activations, float32_bytes,
                         inference_peak, training_activations, volume)
from .errors import ConfigError

FORMATS = ("text", "markdown", "json", "dict")


def summary_data(model, batch_size: int = 1) -> dict:
    """The summary as plain data: one entry per layer, then totals and memory for ``batch_size``."""
    model._require_built()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{model.name}: batch_size must be an int >= 1; received batch_size={batch_size!r}")
    rows, volumes = _layer_rows(model)
    return {"model": model.name, "input_shape": list(model.input_shape), "layers": rows,
            "totals": _totals(model, rows, volumes),
            "memory": _memory(model, volumes, batch_size)}


def _layer_rows(model) -> tuple[list[dict], list[LayerVolumes]]:
    field = (ReceptiveField(), ReceptiveField())
    rows, volumes = [], []
    for layer in model.layers:
        field = layer.receptive_field(field)
        trainable = sum(p.size for p in layer.parameters().values() if p.trainable)
        rows.append({
            "name": layer.name, "type": type(layer).__name__, "output_shape": list(layer.output_shape),
            "params": layer.param_count(), "trainable": trainable, "activations": layer.activations(),
            "macs": layer.macs(), "receptive_field": [field[0].size, field[1].size],
            "jump": [field[0].jump, field[1].jump], "whole_input": field[0].whole and field[1].whole,
            "unread": list(layer.unread()),
        })
        volumes.append(LayerVolumes(volume(layer.input_shape), layer.activations(), layer.in_place,
                                    layer.cached_per_sample(), layer.workspace_per_sample()))
    return rows, volumes


def _totals(model, rows: list[dict], volumes: list[LayerVolumes]) -> dict:
    params = sum(row["params"] for row in rows)
    trainable = sum(row["trainable"] for row in rows)
    by_kind: dict[str, int] = {}
    for row in rows:
        if row["params"]:
            by_kind[row["type"]] = by_kind.get(row["type"], 0) + row["params"]
    activations = counted_activations(volume(model.input_shape), volumes)
    return {"params": params, "trainable": trainable, "frozen": params - trainable,
            "buffers": sum(v.size for v in model.buffers().values()),
            "share_by_kind": {kind: count / params for kind, count in by_kind.items()} if params else {},
            "activations": activations, "activation_bytes": float32_bytes(activations),
            "macs": sum(row["macs"] for row in rows)}


def _memory(model, volumes: list[LayerVolumes], batch_size: int) -> dict:
    params = sum(p.size for p in model.parameters().values()) + sum(v.size for v in model.buffers().values())
    trainable = sum(p.size for p in model.parameters(trainable_only=True).values())
    weights = float32_bytes(params)
    inference = float32_bytes(inference_peak(volumes) * batch_size)
    training = float32_bytes(training_activations(volumes) * batch_size)
    gradients = float32_bytes(trainable)
    optimizer = {name: float32_bytes(slots * trainable) for name, slots in OPTIMIZER_SLOTS.items()}
    return {"batch_size": batch_size, "parameters_bytes": weights, "inference_activations_bytes": inference,
            "inference_total_bytes": weights + inference, "training_activations_bytes": training,
            "gradients_bytes": gradients, "optimizer_bytes": optimizer,
            "training_total_bytes": {name: weights + training + gradients + state
                                     for name, state in optimizer.items()}}


def render_summary(model, batch_size: int = 1, format: str = "text", print_fn=print):
    """Render :func:`summary_data` in ``format`` (text is also printed with ``print_fn``)."""
    if format not in FORMATS:
        raise ConfigError(f"summary: format must be one of {FORMATS}; received format={format!r}")
    data = summary_data(model, batch_size)
    if format == "dict":
        return data
    if format == "json":
        return json.dumps(data, indent=2)
    text = _table(data, markdown=format == "markdown")
    if format == "text" and print_fn is not None:
        print_fn(text)
    return text


COLUMNS = ("layer", "type", "output", "params", "activations", "mult-adds", "receptive field")


def _cells(row: dict) -> list[str]:
    shape = " x ".join(map(str, row["output_shape"]))
    field = "whole input" if row["whole_input"] else "x".join(map(str, row["receptive_field"]))
    if any(row["unread"]):
        field += f" (skips {row['unread'][0]} rows, {row['unread'][1]} cols)"
    return [row["name"], row["type"], shape, f"{row['params']:,}", f"{row['activations']:,}",
            f"{row['macs']:,}", field]


def _table(data: dict, markdown: bool) -> str:
    body = [_cells(row) for row in data["layers"]]
    lines = _markdown_rows(body) if markdown else _aligned_rows(body)
    return "\n".join([f"Model: {data['model']}   input {' x '.join(map(str, data['input_shape']))}",
                      *lines, "", *_total_lines(data)])


def _aligned_rows(body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [list(COLUMNS), *body]) for i in range(len(COLUMNS))]
    numeric = {3, 4, 5}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(fmt(list(COLUMNS)))
    return [rule, fmt(list(COLUMNS)), rule, *[fmt(r) for r in body], rule]


def _markdown_rows(body: list[list[str]]) -> list[str]:
    head = "| " + " | ".join(COLUMNS) + " |"
    align = "|" + "|".join(" ---: " if i in (3, 4, 5) else " --- " for i in range(len(COLUMNS))) + "|"
    return ["", head, align, *["| " + " | ".join(r) + " |" for r in body]]


def human_bytes(count: int) -> str:
    """``1536 -> "1.5 KiB"``: binary units, one decimal."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    raise AssertionError("unreachable")


def _scaled_count(count: int) -> str:
    """``15_470_264_320 -> "15.47 G"``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def _total_lines(data: dict) -> list[str]:
    t, m = data["totals"], data["memory"]
    shares = ", ".join(f"{kind} {share:.1%}" for kind, share in
                       sorted(t["share_by_kind"].items(), key=lambda kv: -kv[1]))
    return [
        f"Parameters: {t['params']:,} (trainable {t['trainable']:,}, frozen {t['frozen']:,})"
        + (f", plus {t['buffers']:,} buffered statistics" if t["buffers"] else ""),
        f"Share of parameters: {shares}" if shares else "Share of parameters: none",
        f"Activations per image: {t['activations']:,} ({human_bytes(t['activation_bytes'])} float32)",
        f"Multiply-accumulates per image: {t['macs']:,} ({_scaled_count(t['macs'])})",
        f"Memory at batch size {m['batch_size']}: weights {human_bytes(m['parameters_bytes'])}; "
        f"inference {human_bytes(m['inference_total_bytes'])} (peak activations {human_bytes(m['inference_activations_bytes'])}); "
        f"training with SGD+momentum {human_bytes(m['training_total_bytes']['momentum'])}, "
        f"with Adam {human_bytes(m['training_total_bytes']['adam'])}",
    ]
