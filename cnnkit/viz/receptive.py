"""The receptive field of one unit: the input region it sees, drawn on an image."""

from __future__ import annotations

import numpy as np

from ..arithmetic import ReceptiveField
from ..errors import ConfigError
from ..summary import node_fields
from ._figure import as_rgb, find_layer, new_figure
from .activations import as_batch


def field_of(model, layer: str | int) -> tuple[ReceptiveField, ReceptiveField]:
    """The (height, width) receptive field of one unit of ``layer``, from the layers' own arithmetic:
    in a graph, the largest along the paths that reach it (what the summary shows)."""
    name = find_layer(model, layer, "receptive_field").name
    return node_fields(model)[model.tensor(name)][1]


def receptive_box(model, layer: str | int, unit: tuple[int, int] | None = None, clip: bool = True
                  ) -> tuple[float, float, float, float]:
    """The input region ``(top, left, bottom, right)`` in pixel edges that unit ``(row, col)`` of
    ``layer`` sees (default: the centre unit); pixel ``k`` spans ``[k, k+1)``.

    The centre of unit ``i`` lies at ``start + i * jump`` and its field spans ``size`` pixels.
    With ``clip`` the region is cut to the image; without it, it also counts the padding it covers.
    """
    fields = field_of(model, layer)
    chosen = find_layer(model, layer, "receptive_field")
    spatial = len(chosen.output_shape) == 3 and not fields[0].whole
    if unit is None:
        unit = (chosen.output_shape[0] // 2, chosen.output_shape[1] // 2) if spatial else (0, 0)
    if spatial and not all(0 <= u < s for u, s in zip(unit, chosen.output_shape[:2])):
        raise ConfigError(f"receptive_field: unit={tuple(unit)} lies outside {chosen.name}'s "
                          f"{chosen.output_shape[0]}x{chosen.output_shape[1]} output")
    edges = []
    for field, index, size in zip(fields, unit if spatial else (0, 0), model.input_shape[:2]):
        centre = field.start + index * field.jump
        low, high = centre - field.size / 2, centre + field.size / 2
        edges.append((max(0.0, low), min(float(size), high)) if clip else (low, high))
    return edges[0][0], edges[1][0], edges[0][1], edges[1][1]


def receptive_field(model, layer: str | int, image: np.ndarray | None = None,
                    unit: tuple[int, int] | None = None):
    """The input region one unit of ``layer`` sees, drawn on ``image`` (default: a blank grid), as a Figure.

    The region is drawn whole, also where it reaches into the padding around the image (hatched);
    the neighbouring unit's region is drawn dashed, to show the jump (the stride in input pixels).
    """
    chosen = find_layer(model, layer, "receptive_field")
    height, width = model.input_shape[:2]
    picture = (as_rgb(as_batch(model, image, "receptive_field")[0]) if image is not None
               else np.full((height, width, 3), 0.97))
    fields = field_of(model, chosen.name)
    spatial = len(chosen.output_shape) == 3 and not fields[0].whole
    centre = unit or ((chosen.output_shape[0] // 2, chosen.output_shape[1] // 2) if spatial else (0, 0))
    boxes = [(receptive_box(model, chosen.name, unit, clip=False), "-", "#d62728", f"unit {tuple(centre)}")]
    if spatial and centre[1] + 1 < chosen.output_shape[1]:
        boxes.append((receptive_box(model, chosen.name, (centre[0], centre[1] + 1), clip=False), "--",
                      "#1f77b4", "next unit"))
    top, left = min(0.0, *(b[0][0] for b in boxes)), min(0.0, *(b[0][1] for b in boxes))
    bottom = max(float(height), *(b[0][2] for b in boxes))
    right = max(float(width), *(b[0][3] for b in boxes))
    fig = new_figure(4.4, 4.4 * (bottom - top) / (right - left) + 0.9)
    axes = fig.add_subplot()
    if (top, left, bottom, right) != (0.0, 0.0, float(height), float(width)):
        axes.add_patch(_padding(top, left, bottom, right))
    axes.imshow(picture, interpolation="nearest", extent=(0, width, height, 0))
    if image is None and max(height, width) <= 32:   # a pixel grid, while pixels are big enough to count
        axes.vlines(range(width + 1), 0, height, color="#bbbbbb", linewidth=0.6)
        axes.hlines(range(height + 1), 0, width, color="#bbbbbb", linewidth=0.6)
    for box, style, colour, label in boxes:
        _draw_box(axes, box, style, colour, label)
    margin = 0.35   # keeps a box that ends on the image edge off the axes frame
    axes.set_xlim(left - margin, right + margin)
    axes.set_ylim(bottom + margin, top - margin)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize=7, frameon=False)
    size = "the whole input" if fields[0].whole else f"{fields[0].size}x{fields[1].size} input pixels"
    axes.set_title(f"{chosen.name}: one unit sees {size}\nneighbouring units are {fields[0].jump} px apart",
                   fontsize=9)
    return fig


def _padding(top: float, left: float, bottom: float, right: float):
    from matplotlib.patches import Rectangle
    return Rectangle((left, top), right - left, bottom - top, facecolor="#eeeeee", edgecolor="#bbbbbb",
                     hatch="//", linewidth=0, label="padding", zorder=0)


def _draw_box(axes, box: tuple[float, float, float, float], style: str, colour: str, label: str) -> None:
    from matplotlib.patches import Rectangle
    top, left, bottom, right = box
    axes.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=colour,
                             linewidth=2.2, linestyle=style, label=label))
