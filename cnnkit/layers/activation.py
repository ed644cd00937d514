"""Activation layers: elementwise non-linearities, shape in = shape out (maxout excepted)."""

from __future__ import annotations

import numpy as np

from ..arithmetic import check_positive, prelu_params
from ..errors import ConfigError
from ..parameter import Parameter
from .base import Layer


class ReLU(Layer):
    """``max(0, x)``: the activation that, the lecture notes, makes SGD converge much faster."""

    wants_he_init = True
    in_place = True

    def cached_per_sample(self) -> int:
        return self.activations()


class LeakyReLU(Layer):
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise."""

    wants_he_init = True
    in_place = True

    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        if not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ConfigError(f"{name or 'LeakyReLU'}: negative_slope must be a number >= 0; "
                              f"received negative_slope={negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def cached_per_sample(self) -> int:
        return self.activations()


class PReLU(Layer):
    """Parametric ReLU (He et al. 2015): a learnable negative slope per channel, ``alpha`` of shape (C,)."""

    wants_he_init = True

    def __init__(self, initial_slope: float = 0.25, name: str | None = None):
        super().__init__(name)
        self.initial_slope = initial_slope

    def _build(self, input_shape, rng):
        channels = input_shape[-1]
        self._params = {"alpha": Parameter(np.full(channels, self.initial_slope, np.float32))}
        return input_shape

    def param_count(self) -> int:
        return prelu_params(self.input_shape[-1])

    def cached_per_sample(self) -> int:
        return self.activations()


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``."""

    in_place = True

    def cached_per_sample(self) -> int:
        return self.activations()


class Tanh(Layer):
    """``tanh(x)``."""

    in_place = True

    def cached_per_sample(self) -> int:
        return self.activations()


class Maxout(Layer):
    """Maxout (Goodfellow et al. 2013) over channel groups: C channels -> C / pieces.

    Output channel ``j`` is the maximum of input channels ``j*pieces ... j*pieces + pieces - 1``.
    A maxout unit with its own linear pieces is a ``Conv2d``/``Dense`` with ``pieces`` times the
    units followed by this layer.
    """

    def __init__(self, pieces: int = 2, name: str | None = None):
        super().__init__(name)
        self.pieces = pieces

    def _build(self, input_shape, rng):
        if not isinstance(self.pieces, int) or isinstance(self.pieces, bool):
            raise ConfigError(f"{self.label}: pieces must be an int; received pieces={self.pieces!r}")
        check_positive(self.pieces, "pieces", self.label, "the number of linear pieces per unit")
        channels = input_shape[-1]
        if channels % self.pieces:
            raise ConfigError(f"{self.label}: the input's {channels} channels do not split into groups of "
                              f"pieces={self.pieces}; make the layer before output a multiple of {self.pieces}")
        return (*input_shape[:-1], channels // self.pieces)

    def cached_per_sample(self) -> int:
        return self.activations()


class Softmax(Layer):
    """Softmax over the last axis: class scores to probabilities.

    Training a model that ends in ``Softmax`` with cross-entropy uses the fused, numerically
    stable loss on the scores before it.
    """

    in_place = True

    def cached_per_sample(self) -> int:
        return self.activations()
