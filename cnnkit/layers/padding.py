"""`ZeroPadding2d`: zeros added around the height and width of a volume, on each side its own amount."""

from __future__ import annotations

import numpy as np

from ..arithmetic import zero_padding
from ..ops.window import pad, unpad
from .base import Layer


class ZeroPadding2d(Layer):
    """Pad a channels-last volume with zeros (Keras's ``ZeroPadding2D``; PyTorch's ``ZeroPad2d``).

    Args:
        padding: an int (every side), a pair ``(pad_h, pad_w)`` (top and bottom ``pad_h``, left and
            right ``pad_w``), or ``((top, bottom), (left, right))``, as in Keras. Asymmetric
            padding is how a framework with ``padding="same"`` lines a strided convolution up
            with one that pads symmetrically: ``ZeroPadding2d(((0, 1), (0, 1)))`` then a valid
            3x3 stride-2 convolution is Keras's ``"same"``; ``((1, 1), (1, 1))`` is PyTorch's.

    Input ``(B, H, W, C)``, output ``(B, H + top + bottom, W + left + right, C)``. Backward crops
    the gradient back to the input's place. No parameters, no multiply-adds; in the receptive
    field a 1x1 window of stride 1 that pads, so the field's centre moves by ``top``/``left``.
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, padding=1, name: str | None = None):
        super().__init__(name)
        self.padding = padding

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        self._windows = zero_padding(self.padding, self.label)
        return (*self._windows.output_hw((h, w)), c)

    def windows(self):
        return self._windows

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The padded volume (a new array); the context is the batch size, all the backward needs."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = pad(x, self._windows)
        return (x.copy() if y is x else y), (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """The gradient's interior, where the input was (a new array)."""
        self.check_grad(dy, (context, *self.output_shape))
        return np.ascontiguousarray(unpad(dy, self._windows)) if self._windows.padded else dy.copy()
