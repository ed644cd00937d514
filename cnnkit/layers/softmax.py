"""Softmax and log-softmax over one axis: the activations that normalise along an axis rather than
act on each number alone.

``axis`` is Keras's: an axis of the whole array, batch axis 0 included, negative counting from the
end (-1, the default, is the channels or the classes). Normalising over the batch would make each
sample's output depend on the others, so axis 0 is refused when the layer is built.
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import CallMemory
from ..errors import ConfigError
from ..ops.loss import log_softmax, log_softmax_backward, softmax, softmax_backward
from .base import Layer


def _checked_axis(axis, label: str) -> int:
    """``axis`` as given, once it is an int (its range is checked at build, against the input)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ConfigError(f"{label}: axis must be an int (an axis of the batch, -1 the last); "
                          f"received axis={axis!r}")
    return int(axis)


def _batch_axis(axis: int, input_shape: tuple[int, ...], label: str) -> int:
    """The non-negative axis of a batch ``(B, *input_shape)`` that ``axis`` names; :class:`ConfigError`
    for the batch axis or one the batch does not have."""
    ndim = len(input_shape) + 1
    if not -ndim <= axis < ndim:
        raise ConfigError(f"{label}: axis={axis} is not an axis of a batch of shape (B, "
                          f"{', '.join(map(str, input_shape))}) ({ndim} axes); give an axis in 1..{ndim - 1} "
                          f"or -{ndim - 1}..-1")
    if axis % ndim == 0:
        raise ConfigError(f"{label}: axis={axis} is the batch axis; a sample's output may not depend on the "
                          f"other samples of its batch; give an axis in 1..{ndim - 1} or -{ndim - 1}..-1")
    return axis % ndim


class _OverAxis(Layer):
    """A normalisation along one axis of the batch, whose backward needs only its output."""

    def __init__(self, axis: int = -1, name: str | None = None):
        super().__init__(name)
        self.axis = _checked_axis(axis, name or type(self).__name__)
        self._axis: int | None = None   # ``axis`` as a non-negative axis of the batch, once built

    def _build(self, input_shape, rng):
        self._axis = _batch_axis(self.axis, input_shape, self.label)
        return input_shape

    @property
    def over_last_axis(self) -> bool:
        """Whether the layer normalises over the last axis (the classes, for a classifier's output)."""
        if self._axis is None:
            return self.axis == -1
        return self._axis == len(self.input_shape)

    def receptive_field(self, field):
        """Along a spatial axis it normalises over, each output reads that whole axis of its input."""
        if len(self.input_shape) != 3 or self._axis not in (1, 2):
            return field
        fields = list(field)
        fields[self._axis - 1] = field[self._axis - 1].covering(self.input_shape[self._axis - 1])
        return tuple(fields)

    def cached_per_sample(self) -> int:
        return self.activations()


class Softmax(_OverAxis):
    """Softmax along ``axis`` (by default the last): ``exp(x) / sum(exp(x))``, scores to probabilities.

    Training a model that ends in a ``Softmax`` over the last axis with cross-entropy uses the
    fused, numerically stable loss on the scores before it.
    """

    in_place = True

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = softmax(x, axis=self._axis)
        return y, (y if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        y = context
        self.check_grad(dy, y.shape)
        return softmax_backward(dy, y, axis=self._axis)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # a new array even when the input is handed over; the context is the output
        return CallMemory(keeps_output=True)


class LogSoftmax(_OverAxis):
    """Log-softmax along ``axis`` (by default the last): ``x - log(sum(exp(x)))``, computed stably.

    The gradient comes from the cached output: ``dy - exp(y) * sum(dy)`` along the axis.
    """

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = log_softmax(x, axis=self._axis)
        return y, (y if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        y = context
        self.check_grad(dy, y.shape)
        return log_softmax_backward(dy, y, axis=self._axis)

    def workspace_per_sample(self) -> int:
        return self.activations()   # the exponentials summed, beside the output

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(workspace=self.workspace_per_sample(), keeps_output=True)
