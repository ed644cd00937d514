"""Activation layers: elementwise non-linearities, shape in = shape out (maxout excepted).

In place: ``forward`` and ``backward`` never modify the arrays passed to them. The executor
(``Sequential``, ``train_step``: :mod:`cnnkit.layers.fusion`) calls :meth:`Layer.forward_owned`
instead when the input is a fresh output of the layer before that nobody else reads; then
ReLU, LeakyReLU, Sigmoid and Tanh overwrite it and allocate no new volume. Likewise
:meth:`Layer.backward_owned` lets ReLU overwrite a fresh input gradient of the layer after.
The decision is the caller's, per call: a layer called directly (``model["relu_1"](x)``)
leaves the caller's arrays alone.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ..arithmetic import check_positive, prelu_params
from ..errors import ConfigError
from ..ops.activation import (leaky_relu, leaky_relu_backward, maxout, maxout_backward, prelu, prelu_backward,
                              relu, relu_backward, sigmoid, sigmoid_backward, tanh, tanh_backward)
from ..ops.loss import softmax, softmax_backward
from ..parameter import Parameter
from .base import Layer


class _Elementwise(Layer):
    """An activation computed from its input alone whose backward needs only its output."""

    in_place = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self._forward(x, training, overwrite=False)

    def forward_owned(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The activation computed in ``x``'s own memory (the caller hands ``x`` over)."""
        return self._forward(x, training, overwrite=True)

    def _forward(self, x: np.ndarray, training: bool, overwrite: bool) -> np.ndarray:
        x = self.check_input(x)
        y = self._apply(x, x if overwrite else None)
        self._cache = y if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self._backward(dy, overwrite=False)

    def backward_owned(self, dy: np.ndarray) -> np.ndarray:
        return self._backward(dy, overwrite=True)

    def _backward(self, dy: np.ndarray, overwrite: bool) -> np.ndarray:
        y = self.take_cache()
        self.check_grad(dy, y.shape)
        return self._gradient(dy, y, overwrite)

    @abstractmethod
    def _apply(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The activation of ``x``, written into ``out`` when given."""

    @abstractmethod
    def _gradient(self, dy: np.ndarray, y: np.ndarray, overwrite: bool) -> np.ndarray:
        """The input gradient from the output gradient and the cached output (into ``dy`` when
        ``overwrite`` and the activation can)."""

    def cached_per_sample(self) -> int:
        return self.activations()


class ReLU(_Elementwise):
    """``max(0, x)``: the activation that, the lecture notes, makes SGD converge much faster.

    Training caches the output (the array the next layer keeps as its input anyway); the
    gradient is ``dy`` where the output is positive and 0 elsewhere.
    """

    wants_he_init = True
    fused_as = "relu"
    #: The last forward was adopted from a layer that applied this ReLU (see ``adopt_fused``).
    _applied_before = False

    def _forward(self, x: np.ndarray, training: bool, overwrite: bool) -> np.ndarray:
        self._applied_before = False
        return super()._forward(x, training, overwrite)

    def adopt_fused(self, y: np.ndarray, training: bool) -> np.ndarray:
        self.check_input(y)
        self._applied_before = True
        self._cache = y if training else None
        return y

    def _apply(self, x, out):
        return relu(x, out)

    def _gradient(self, dy, y, overwrite):
        if self._applied_before:   # the layer before masks the gradient as it reads it
            return dy
        return relu_backward(dy, y, out=dy if overwrite else None)


class LeakyReLU(_Elementwise):
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise."""

    wants_he_init = True

    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        if not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ConfigError(f"{name or 'LeakyReLU'}: negative_slope must be a number >= 0; "
                              f"received negative_slope={negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def _apply(self, x, out):
        return leaky_relu(x, self.negative_slope, out)

    def _gradient(self, dy, y, overwrite):
        return leaky_relu_backward(dy, y, self.negative_slope)


class PReLU(Layer):
    """Parametric ReLU (He et al. 2015): a learnable negative slope per channel, ``alpha`` of shape (C,)."""

    fresh_output = True

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

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        x = self.check_input(x)
        self._cache = x if training else None  # the slope's gradient needs x itself
        return prelu(x, self._params["alpha"].value)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self.take_cache()
        self.check_grad(dy, x.shape)
        alpha = self._params["alpha"]
        dx, dalpha = prelu_backward(dy, x, alpha.value, need_alpha_grad=alpha.trainable)
        if dalpha is not None:
            alpha.accumulate(dalpha, fresh=True)
        return dx

    def cached_per_sample(self) -> int:
        return self.activations()


class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``, computed without overflow for any ``x``."""

    def _apply(self, x, out):
        return sigmoid(x, out)

    def _gradient(self, dy, y, overwrite):
        return sigmoid_backward(dy, y)


class Tanh(_Elementwise):
    """``tanh(x)``."""

    def _apply(self, x, out):
        return tanh(x, out)

    def _gradient(self, dy, y, overwrite):
        return tanh_backward(dy, y)


class Maxout(Layer):
    """Maxout (Goodfellow et al. 2013) over channel groups: C channels -> C / pieces.

    Output channel ``j`` is the maximum of input channels ``j*pieces ... j*pieces + pieces - 1``.
    A maxout unit with its own linear pieces is a ``Conv2d``/``Dense`` with ``pieces`` times the
    units followed by this layer.
    """

    fresh_output = True

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

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        x = self.check_input(x)
        y, argmax = maxout(x, self.pieces)
        self._cache = argmax if training else None  # the winning piece per output, one byte each
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        argmax = self.take_cache()
        self.check_grad(dy, argmax.shape)
        return maxout_backward(dy, argmax, self.pieces)

    def cached_per_sample(self) -> int:
        return self.activations()


class Softmax(Layer):
    """Softmax over the last axis: class scores to probabilities.

    Training a model that ends in ``Softmax`` with cross-entropy uses the fused, numerically
    stable loss on the scores before it.
    """

    in_place = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        x = self.check_input(x)
        y = softmax(x)
        self._cache = y if training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self.take_cache()
        self.check_grad(dy, y.shape)
        return softmax_backward(dy, y)

    def cached_per_sample(self) -> int:
        return self.activations()
