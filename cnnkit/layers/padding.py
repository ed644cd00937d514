"""Padding layers: `ZeroPadding2d` adds zeros around the height and width of a volume, on each
side its own amount; `Padding2d` adds a constant, a reflection or the edge."""

from __future__ import annotations

import math

import numpy as np

from ..arithmetic import zero_padding
from ..errors import ConfigError
from ..ops.window import pad, unpad
from .base import Layer, check_choice


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


PADDING_MODES = ("constant", "reflect", "edge")


class Padding2d(Layer):
    """Pad the height and width of a channels-last volume with a constant, a reflection or the edge.

    Args:
        padding: as :class:`ZeroPadding2d`: an int, a pair ``(pad_h, pad_w)`` or
            ``((top, bottom), (left, right))``.
        mode: ``"constant"`` fills with ``value``; ``"reflect"`` mirrors the input about its first
            and last row (or column), not repeating them (NumPy's and PyTorch's ``"reflect"``; a
            side's padding must then be smaller than the input along it); ``"edge"`` repeats the
            first and last row (NumPy's ``"edge"``, PyTorch's ``"replicate"``). ONNX's ``Pad``
            modes have these names.
        value: the constant of ``mode="constant"`` (ignored by the others).

    Input ``(B, H, W, C)``, output ``(B, H + top + bottom, W + left + right, C)``. Backward
    crops the gradient to the input's place and, for ``"reflect"`` and ``"edge"``, adds the
    gradient of every padded row (column) into the input row it copies. No parameters, no
    multiply-adds; the receptive field is ZeroPadding2d's (1x1 windows that pad: it moves by
    ``top``/``left``), although a reflected border shows pixels of the interior.
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, padding=1, mode: str = "constant", value: float = 0.0, name: str | None = None):
        super().__init__(name)
        self.padding = padding
        self.mode = mode
        self.value = value

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        check_choice(self.mode, "mode", PADDING_MODES, self.label)
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ConfigError(f"{self.label}: value must be a finite number; received value={self.value!r}")
        self._windows = zero_padding(self.padding, self.label)
        if self.mode == "reflect":
            for size, win, axis in zip((h, w), self._windows, "HW"):
                if max(win.pads) >= size:
                    raise ConfigError(
                        f"{self.label}: reflect padding must be smaller than the input along {axis} "
                        f"({axis} = {size}); received padding={self.padding!r} ({win.pads} along {axis}); "
                        f"lower padding or use mode='edge'")
        return (*self._windows.output_hw((h, w)), c)

    def windows(self):
        return self._windows

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The padded volume (a new array); the context is the batch size, all the backward needs."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        if self.mode == "constant":
            y = pad(x, self._windows, self.value)
            y = x.copy() if y is x else y
        else:
            (top, bottom), (left, right) = (win.pads for win in self._windows)
            y = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode=self.mode)
        return y, (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """The gradient's interior, plus, for reflect and edge, each padded row's gradient added
        into the row it copies (a new array)."""
        self.check_grad(dy, (context, *self.output_shape))
        if self.mode == "constant":
            return np.ascontiguousarray(unpad(dy, self._windows)) if self._windows.padded else dy.copy()
        h, w, _ = self.input_shape
        folded = _fold_border(dy, 2, w, self._windows[1].pads, self.mode)
        return _fold_border(folded, 1, h, self._windows[0].pads, self.mode)


def _fold_border(grad: np.ndarray, axis: int, size: int, pads: tuple[int, int], mode: str) -> np.ndarray:
    """The gradient along ``axis`` of an input of ``size`` rows padded by ``pads`` in ``mode``:
    the interior, with each padded row's gradient added into the input row it was copied from."""
    before, after = pads
    sources = np.pad(np.arange(size), (before, after), mode=mode)   # input row of each padded row
    dx = np.take(grad, range(before, before + size), axis=axis)      # a copy
    for row in (*range(before), *range(before + size, before + size + after)):
        target = [slice(None)] * grad.ndim
        target[axis] = sources[row]
        source = list(target)
        source[axis] = row
        dx[tuple(target)] += grad[tuple(source)]
    return dx
