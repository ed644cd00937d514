"""Pictures of a network and its training: filters, activation maps, curves, confusion matrix, report.

Needs the optional extra ``cnnkit[viz]`` (matplotlib). Importing this package does not import
matplotlib; drawing does, and says how to install it when it is missing. Every function
returns a matplotlib ``Figure`` made without pyplot (no global state); :func:`save` writes one
as PNG or SVG.
"""

from ._figure import matplotlib_available, save
from .activations import activation_maps, activations
from .confusion import confusion, confusion_figure, confusion_matrix
from .curves import curves, load_history
from .filters import filter_tiles, filters
from .functions import activation_curves, activation_functions
from .receptive import receptive_box, receptive_field
from .report import render_report, report_after_run, write_report

__all__ = ["filters", "filter_tiles", "activations", "activation_maps", "curves", "load_history", "confusion",
           "confusion_matrix", "confusion_figure", "activation_functions", "activation_curves", "receptive_field",
           "receptive_box", "save", "write_report", "render_report", "report_after_run", "matplotlib_available"]
