"""Activation layers: elementwise non-linearities, shape in = shape out (maxout excepted).

In place: ``forward`` and ``backward`` never modify the arrays passed to them. The executor
(:mod:`cnnkit.executor`) calls :meth:`Layer.call` with ``owned=True`` instead when the input
is a fresh output that nothing else reads; then ReLU, ReLU6, LeakyReLU, Sigmoid and Tanh overwrite
it and allocate no new volume. Likewise ``call_backward(..., owned=True)`` lets ReLU and ReLU6
overwrite a fresh input gradient. The decision is the executor's, per call: a layer called directly
(``model["relu_1"](x)``) leaves the caller's arrays alone.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ..arithmetic import CallMemory, check_positive, prelu_params
from ..errors import ConfigError
from ..ops.activation import (leaky_relu, leaky_relu_backward, maxout, maxout_backward, prelu, prelu_backward,
                              relu, relu6, relu6_backward, relu_backward, sigmoid, sigmoid_backward, tanh,
                              tanh_backward)
from ..ops.loss import softmax, softmax_backward
from ..parameter import Parameter
from .base import Layer


class _Elementwise(Layer):
    """An activation computed from its input alone whose backward needs only its output."""

    in_place = True
    overwrites_owned = True

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The activation, computed in ``x``'s own memory when the caller hands ``x`` over
        (``owned``); the context is the output, which the gradient is computed from."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = self._apply(x, x if owned else None)
        return y, (y if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        y = context
        self.check_grad(dy, y.shape)
        return self._gradient(dy, y, owned)

    @abstractmethod
    def _apply(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The activation of ``x``, written into ``out`` when given."""

    @abstractmethod
    def _gradient(self, dy: np.ndarray, y: np.ndarray, overwrite: bool) -> np.ndarray:
        """The input gradient from the output gradient and the cached output (into ``dy`` when
        ``overwrite`` and the activation can)."""

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=bool(owned), keeps_output=True)


class ReLU(_Elementwise):
    """``max(0, x)``: the activation that, the lecture notes, makes SGD converge much faster.

    Training caches the output (the array the next layer keeps as its input anyway); the
    gradient is ``dy`` where the output is positive and 0 elsewhere.
    """

    wants_he_init = True
    fused_as = "relu"

    def _apply(self, x, out):
        return relu(x, out)

    def _gradient(self, dy, y, overwrite):
        return relu_backward(dy, y, out=dy if overwrite else None)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=bool(owned), keeps_output=True, grad_in_place=True)


class ReLU6(_Elementwise):
    """``min(max(0, x), 6)``: ReLU capped at 6 (MobileNet's activation, Keras's ``ReLU(max_value=6)``,
    PyTorch's ``nn.ReLU6``).

    Like :class:`ReLU` it works in place when handed its input, caches its output, and overwrites
    a handed-over gradient: ``dy`` where ``0 < y < 6``, 0 elsewhere (0 at both kinks, as PyTorch).
    A convolution before it whose output it alone reads applies it as it writes (``fused_as``).
    """

    wants_he_init = True
    fused_as = "relu6"

    def _apply(self, x, out):
        return relu6(x, out)

    def _gradient(self, dy, y, overwrite):
        return relu6_backward(dy, y, out=dy if overwrite else None)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=bool(owned), keeps_output=True, grad_in_place=True)


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

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        return prelu(x, self._params["alpha"].value), (x if training else None)  # the slope's gradient needs x

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        x = context
        self.check_grad(dy, x.shape)
        alpha = self._params["alpha"]
        dx, dalpha = prelu_backward(dy, x, alpha.value, need_alpha_grad=alpha.trainable)
        if dalpha is not None:
            alpha.accumulate(dalpha, fresh=True)
        return dx

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(keeps_input=True)


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

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        y, argmax = maxout(x, self.pieces)
        return y, (argmax if training else None)  # the winning piece per output, one byte each

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        argmax = context
        self.check_grad(dy, argmax.shape)
        return maxout_backward(dy, argmax, self.pieces)

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # the context is the index of the winning piece of each output, in the smallest dtype
        return CallMemory(keeps_bytes=self.activations() * np.min_scalar_type(self.pieces - 1).itemsize)


class Softmax(Layer):
    """Softmax over the last axis: class scores to probabilities.

    Training a model that ends in ``Softmax`` with cross-entropy uses the fused, numerically
    stable loss on the scores before it.
    """

    in_place = True

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = softmax(x)
        return y, (y if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        y = context
        self.check_grad(dy, y.shape)
        return softmax_backward(dy, y)

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # a new array even when the input is handed over; the context is the output
        return CallMemory(keeps_output=True)
