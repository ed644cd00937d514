"""The activation functions of the lecture and their derivatives, drawn from cnnkit's own kernels."""

from __future__ import annotations

import numpy as np

from ..ops import activation as ops
from ._figure import new_figure


def activation_curves(x: np.ndarray, leaky_slope: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (f(x), f'(x))`` for sigmoid, tanh, ReLU and leaky ReLU.

    The derivative is the kernel's backward applied to a gradient of ones, so the picture shows
    exactly what back-propagation uses.
    """
    x = np.asarray(x, dtype=np.float64)
    ones = np.ones_like(x)
    sigmoid, tanh, relu = ops.sigmoid(x), ops.tanh(x), ops.relu(x)
    leaky = ops.leaky_relu(x, leaky_slope)
    return {
        "sigmoid": (sigmoid, ops.sigmoid_backward(ones, sigmoid)),
        "tanh": (tanh, ops.tanh_backward(ones, tanh)),
        "ReLU": (relu, ops.relu_backward(ones, relu)),
        f"leaky ReLU (a={leaky_slope:g})": (leaky, ops.leaky_relu_backward(ones, leaky, leaky_slope)),
    }


def activation_functions(leaky_slope: float = 0.1, limit: float = 5.0):
    """Sigmoid, tanh, ReLU and leaky ReLU (left) and their derivatives (right), as a Figure."""
    x = np.linspace(-limit, limit, 801)
    fig = new_figure(8.4, 3.4)
    values, slopes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, (y, dy) in activation_curves(x, leaky_slope).items():
        style = "--" if name.startswith("leaky") else "-"
        values.plot(x, y, style, label=name)
        slopes.plot(x, dy, style, label=name)
    for axes, title in ((values, "f(x)"), (slopes, "f'(x)")):
        axes.axhline(0, color="black", linewidth=0.6)
        axes.axvline(0, color="black", linewidth=0.6)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("x")
        axes.grid(alpha=0.3)
    values.set_ylim(-1.5, limit)
    slopes.set_ylim(-0.1, 1.15)
    values.legend(fontsize=8, loc="upper left")
    return fig
