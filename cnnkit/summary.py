"""`model.summary()`: the lecture's arithmetic per node of a graph, as text, Markdown or JSON.

Every number comes from :mod:`cnnkit.arithmetic` through the layers' hooks, and the memory
from the executor's live set (:mod:`cnnkit.live_set`); this module only gathers and formats.
One row per node of the plan: a layer used at several nodes (shared weights) has a row at
each, its parameters counted at the first. The receptive field follows every path: at a merge
a unit sees the union of its inputs' fields, and where paths of different lengths meet the
table shows the range, smallest..largest.
"""

from __future__ import annotations

import json

from .arithmetic import (OPTIMIZER_SLOTS, ReceptiveField, counted_activations, float32_bytes, merged_field,
                         narrowest_field, volume)
from .errors import ConfigError
from .live_set import inference_peak, training_peaks
from .ops.runtime import folding_batch_norm
from .train import scoring_tensors, training_steps

FORMATS = ("text", "markdown", "json", "dict")


def summary_data(model, batch_size: int = 1) -> dict:
    """The summary as plain data: one entry per node, then totals and memory for ``batch_size``."""
    model._require_built()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{model.name}: batch_size must be an int >= 1; received batch_size={batch_size!r}")
    rows = _node_rows(model)
    shapes = [list(model.tensor_shape(t)) for t in model.plan.inputs]
    return {"model": model.name, "input_shape": shapes if len(shapes) > 1 else shapes[0],
            "inputs": model.node_names()[:len(shapes)], "layers": rows,
            "totals": _totals(model, rows), "memory": _memory(model, batch_size)}


def node_fields(model) -> dict[int, tuple]:
    """Tensor -> (smallest, largest) receptive field of one of its units, each a (height, width)
    pair of :class:`~cnnkit.arithmetic.ReceptiveField`, along every path from the inputs."""
    start = (ReceptiveField(), ReceptiveField())
    fields = {t: (start, start) for t in model.plan.inputs}
    for step in model.plan.steps:
        fields[step.output] = _fields_after(step.layer, [fields[t] for t in step.inputs])
    return fields


def _node_rows(model) -> list[dict]:
    plan, names = model.plan, model.node_names()
    fields = node_fields(model)
    first_node: dict[int, str] = {}
    rows = []
    for step in plan.steps:
        layer = step.layer
        smallest, largest = fields[step.output]
        shared_with = first_node.setdefault(id(layer), step.name)
        first = shared_with == step.name
        trainable = sum(p.size for p in layer.parameters().values() if p.trainable)
        row = {"name": step.name, "type": type(layer).__name__,
               "output_shape": list(model.tensor_shape(step.output)),
               "params": layer.param_count() if first else 0, "trainable": trainable if first else 0,
               "activations": layer.activations(), "macs": layer.macs(),
               "receptive_field": [largest[0].size, largest[1].size],
               "receptive_field_min": [smallest[0].size, smallest[1].size],
               "jump": [_plain(largest[0].jump), _plain(largest[1].jump)],
               "whole_input": largest[0].whole and largest[1].whole,
               "whole_input_min": smallest[0].whole and smallest[1].whole,
               "unread": list(layer.unread()), "connected_to": [names[t] for t in step.inputs]}
        if not first:
            row["shares_weights_with"] = shared_with
        rows.append(row)
    return rows


def _plain(jump):
    """A jump as JSON takes it: an int, or a float when upsampling made units closer than a pixel."""
    return jump if isinstance(jump, int) else float(jump)


def _fields_after(layer, inputs: list[tuple]) -> tuple:
    """(smallest, largest) receptive fields of an output unit, per axis, from the inputs' ones."""
    if len(inputs) == 1:
        smallest, largest = inputs[0]
    else:
        smallest = tuple(narrowest_field([f[0][axis] for f in inputs]) for axis in (0, 1))
        largest = tuple(merged_field([f[1][axis] for f in inputs]) for axis in (0, 1))
    return layer.receptive_field(smallest), layer.receptive_field(largest)


def _totals(model, rows: list[dict]) -> dict:
    params = sum(row["params"] for row in rows)
    trainable = sum(row["trainable"] for row in rows)
    by_kind: dict[str, int] = {}
    for row in rows:
        if row["params"]:
            by_kind[row["type"]] = by_kind.get(row["type"], 0) + row["params"]
    inputs = sum(volume(model.tensor_shape(t)) for t in model.plan.inputs)
    activations = counted_activations(inputs, [step.layer.activations() for step in model.plan.steps
                                               if not step.layer.in_place])
    return {"params": params, "trainable": trainable, "frozen": params - trainable,
            "buffers": sum(v.size for v in model.buffers().values()),
            "share_by_kind": {kind: count / params for kind, count in by_kind.items()} if params else {},
            "activations": activations, "activation_bytes": float32_bytes(activations),
            "macs": sum(row["macs"] for row in rows)}


def _memory(model, batch_size: int) -> dict:
    """Weights, the live sets of inference and of a training step at ``batch_size``, gradients
    and optimizer state, in bytes of float32."""
    plan = model.plan
    params = sum(p.size for p in model.parameters().values()) + sum(v.size for v in model.buffers().values())
    trainable = sum(p.size for p in model.parameters(trainable_only=True).values())
    sizes = {t: volume(model.tensor_shape(t)) for t in range(len(plan.inputs) + len(plan.steps))}
    fold = folding_batch_norm()   # the memory of inference as the entry points would run it here
    inference = inference_peak(plan, sizes, plan.outputs, batch_size, fold)
    gradients = {id(layer): float32_bytes(sum(p.size for p in layer.parameters().values() if p.trainable))
                 for layer in model.layers}
    training = training_peaks(plan, sizes, scoring_tensors(model), training_steps(model), gradients, batch_size,
                              fold)
    weights = float32_bytes(params)
    optimizer = {name: float32_bytes(slots * trainable) for name, slots in OPTIMIZER_SLOTS.items()}
    return {"batch_size": batch_size, "parameters_bytes": weights,
            "inference_activations_bytes": inference.bytes, "inference_peak_at": inference.step,
            "inference_total_bytes": weights + inference.bytes,
            "training_activations_bytes": training.activations.bytes,
            "training_peak_bytes": training.total.bytes, "training_peak_at": training.total.step,
            "gradients_bytes": float32_bytes(trainable), "optimizer_bytes": optimizer,
            "training_total_bytes": {name: weights + training.total.bytes + state
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
#: Where a row is not the previous row's output: the tensors it reads (as Keras shows)
CONNECTED = "connected to"
NUMERIC = (3, 4, 5)


def _cells(row: dict, connected: bool) -> list[str]:
    shape = " x ".join(map(str, row["output_shape"]))
    params = f"{row['params']:,}" if "shares_weights_with" not in row else f"shared ({row['shares_weights_with']})"
    cells = [row["name"], row["type"], shape, params, f"{row['activations']:,}", f"{row['macs']:,}", _field(row)]
    return cells + [", ".join(row["connected_to"])] if connected else cells


def _field(row: dict) -> str:
    """``7x7``, or ``3x3..7x7`` when paths of different lengths reach the node."""
    largest = "whole input" if row["whole_input"] else "x".join(map(str, row["receptive_field"]))
    smallest = "whole input" if row["whole_input_min"] else "x".join(map(str, row["receptive_field_min"]))
    field = largest if smallest == largest else f"{smallest}..{largest}"
    if any(row["unread"]):
        field += f" (skips {row['unread'][0]} rows, {row['unread'][1]} cols)"
    return field


def _is_chain(data: dict) -> bool:
    """Does every node read the one before it (a Sequential)? Then no "connected to" column is needed."""
    previous = data["inputs"]
    for row in data["layers"]:
        if row["connected_to"] != previous[-1:] or len(data["inputs"]) != 1:
            return False
        previous = [row["name"]]
    return True


def _table(data: dict, markdown: bool) -> str:
    connected = not _is_chain(data)
    columns = [*COLUMNS, CONNECTED] if connected else list(COLUMNS)
    body = [_cells(row, connected) for row in data["layers"]]
    lines = _markdown_rows(columns, body) if markdown else _aligned_rows(columns, body)
    return "\n".join([f"Model: {data['model']}   {_inputs(data)}", *lines, "", *_total_lines(data)])


def _inputs(data: dict) -> str:
    shapes = data["input_shape"] if len(data["inputs"]) > 1 else [data["input_shape"]]
    if len(shapes) == 1:
        return f"input {' x '.join(map(str, shapes[0]))}"
    return "inputs " + ", ".join(f"{name} {' x '.join(map(str, shape))}" for name, shape in zip(data["inputs"], shapes))


def _aligned_rows(columns: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [columns, *body]) for i in range(len(columns))]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(fmt(columns))
    return [rule, fmt(columns), rule, *[fmt(r) for r in body], rule]


def _markdown_rows(columns: list[str], body: list[list[str]]) -> list[str]:
    head = "| " + " | ".join(columns) + " |"
    align = "|" + "|".join(" ---: " if i in NUMERIC else " --- " for i in range(len(columns))) + "|"
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
