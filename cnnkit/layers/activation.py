"""Activation layers: elementwise non-linearities, shape in = shape out (maxout excepted).

In place: ``forward`` and ``backward`` never modify the arrays passed to them. The executor
(:mod:`cnnkit.executor`) calls :meth:`Layer.call` with ``owned=True`` instead when the input
is a fresh output that nothing else reads; then ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, Elu,
HardSigmoid and Clip overwrite it and allocate no new output volume. Likewise
``call_backward(..., owned=True)`` lets ReLU, ReLU6 and Clip overwrite a fresh input gradient. The
decision is the executor's, per call: a layer called directly (``model["relu_1"](x)``) leaves the
caller's arrays alone. Softmax and LogSoftmax live in :mod:`cnnkit.layers.softmax`.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ..arithmetic import CallMemory, check_positive, prelu_params
from ..errors import ConfigError
from ..ops.activation import (clip, clip_backward, elu, elu_backward, hard_sigmoid, hard_sigmoid_backward,
                              hard_swish, hard_swish_backward, leaky_relu, leaky_relu_backward, maxout, maxout_backward,
                              prelu, prelu_backward, relu, relu6, relu6_backward, relu_backward, sigmoid,
                              sigmoid_backward, tanh, tanh_backward)
from ..parameter import Parameter
from .base import Layer
from .softmax import LogSoftmax, Softmax  # noqa: F401  (they lived here; importable from here still)


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


def _number(value, argument: str, label: str, meaning: str, minimum: float | None = None) -> float:
    """``value`` as a float; :class:`ConfigError` unless it is a finite number (at least ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ConfigError(f"{label}: {argument} ({meaning}) must be a finite number{bound}; "
                          f"received {argument}={value!r}")
    return float(value)


class Elu(_Elementwise):
    """ELU (Clevert et al. 2015): ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise (PyTorch's
    ``nn.ELU``, Keras's ``ELU``, ONNX's Elu).

    ``alpha >= 0``, so the output is positive exactly where the input is and the gradient is
    computed from the cached output: ``dy`` there, ``dy * (y + alpha)`` elsewhere.
    """

    wants_he_init = True

    def __init__(self, alpha: float = 1.0, name: str | None = None):
        super().__init__(name)
        self.alpha = _number(alpha, "alpha", name or "Elu", "the value the output tends to for very negative "
                             "inputs, negated", minimum=0.0)

    def _apply(self, x, out):
        return elu(x, self.alpha, out)

    def _gradient(self, dy, y, overwrite):
        return elu_backward(dy, y, self.alpha)

    def workspace_per_sample(self) -> int:
        return self.activations()   # the negative part, computed beside the output

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=bool(owned), workspace=self.workspace_per_sample(), keeps_output=True)


class HardSigmoid(_Elementwise):
    """``clip(alpha * x + beta, 0, 1)``, a piecewise-linear sigmoid.

    The defaults are ONNX's (alpha=0.2, beta=0.5, also Keras 2's); PyTorch's ``nn.Hardsigmoid`` is
    ``HardSigmoid(alpha=1/6, beta=0.5)``. The gradient, from the cached output, is ``alpha * dy``
    where ``0 < y < 1`` and 0 elsewhere.
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.alpha = _number(alpha, "alpha", name or "HardSigmoid", "the slope")
        self.beta = _number(beta, "beta", name or "HardSigmoid", "the output at x = 0 before clipping")

    def _apply(self, x, out):
        return hard_sigmoid(x, self.alpha, self.beta, out)

    def _gradient(self, dy, y, overwrite):
        return hard_sigmoid_backward(dy, y, self.alpha)


class HardSwish(Layer):
    """``x * clip(x / 6 + 1/2, 0, 1)`` (MobileNetV3's activation; PyTorch's ``nn.Hardswish``, ONNX's
    HardSwish).

    The output does not determine the gradient (it takes each value between -3/8 and 0 twice), so
    training keeps the input: the gradient is 0 for ``x < -3``, ``dy * (x / 3 + 1/2)`` for
    ``-3 <= x <= 3`` and ``dy`` above.
    """

    fresh_output = True
    fresh_input_grad = True

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        return hard_swish(x), (x if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        x = context
        self.check_grad(dy, x.shape)
        return hard_swish_backward(dy, x)

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(keeps_input=True)


class Clip(_Elementwise):
    """``min(max(x, min_value), max_value)``; a bound that is None does not apply (ONNX's Clip,
    PyTorch's ``clamp``). ``Clip(0, 6)`` computes what :class:`ReLU6` does.

    Works in place like :class:`ReLU6` and takes its gradient from the cached output: ``dy``
    strictly between the bounds, 0 on or beyond them (PyTorch's ``clamp`` passes ``dy`` at an input
    exactly on a bound; the two differ only there). ``Clip(0, 6)`` and ``Clip(0, None)`` after a
    convolution are fused into it as ReLU6 and ReLU are (``fused_as``).
    """

    def __init__(self, min_value: float | None = None, max_value: float | None = None, name: str | None = None):
        super().__init__(name)
        label = name or "Clip"
        self.min_value = None if min_value is None else _number(min_value, "min_value", label, "the lower bound")
        self.max_value = None if max_value is None else _number(max_value, "max_value", label, "the upper bound")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ConfigError(f"{label}: min_value must not exceed max_value; received min_value={min_value!r}, "
                              f"max_value={max_value!r}; swap them")

    @property
    def fused_as(self) -> str | None:
        """``"relu6"`` for ``Clip(0, 6)``, ``"relu"`` for ``Clip(0, None)``: a convolution applies those
        as it writes, with the same gradient rule (0 on the bounds)."""
        if self.min_value != 0.0:
            return None
        return {None: "relu", 6.0: "relu6"}.get(self.max_value)

    def _apply(self, x, out):
        return clip(x, self.min_value, self.max_value, out)

    def _gradient(self, dy, y, overwrite):
        return clip_backward(dy, y, self.min_value, self.max_value, out=dy if overwrite else None)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=bool(owned), keeps_output=True, grad_in_place=True)
