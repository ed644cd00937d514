"""Pooling layers: max and average over K x K windows, and their global forms."""

from __future__ import annotations

import numpy as np

from ..arithmetic import CallMemory, ceil_mode_windows, unread_rows, window_output_size, windows_2d
from ..errors import ConfigError
from ..ops.pool import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward,
                        global_max_pool2d, global_max_pool2d_backward, max_pool2d, max_pool2d_backward)
from .base import Layer


class _Pool2d(Layer):
    """Shared build of the windowed poolings: each depth slice is pooled independently."""

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, pool_size=2, stride=None, padding=0, ceil_mode: bool = False, name: str | None = None):
        super().__init__(name)
        self.pool_size = pool_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        if not isinstance(self.ceil_mode, bool):
            raise ConfigError(f"{self.label}: ceil_mode must be True or False; received ceil_mode={self.ceil_mode!r}")
        stride = self.pool_size if self.stride is None else self.stride
        self._windows = windows_2d((h, w), self.pool_size, stride, self.padding, 1, self.label)
        for win in self._windows:
            # P < K puts at least one input pixel in every window (ONNX's pools accept any P, but
            # leave the max or mean of a window made only of padding undefined)
            if max(win.pad_before, win.pad_after) >= win.kernel:
                raise ConfigError(
                    f"{self.label}: padding must be smaller than the pool size (P < K = {win.kernel}), or a "
                    f"window would see only padding; received padding={self.padding!r}; lower padding")
        if self.ceil_mode:
            self._windows = ceil_mode_windows(self._windows, (h, w))
        out = tuple(window_output_size(size, win, self.label, axis, self.strict, self.ceil_mode)
                    for size, win, axis in zip((h, w), self._windows, "HW"))
        return (*out, c)

    def windows(self):
        return self._windows

    def unread(self):
        return tuple(unread_rows(size, win) for size, win in zip(self.input_shape[:2], self._windows))


class MaxPool2d(_Pool2d):
    """Max pooling: ``h(x, y) = max`` over the K x K window (padding counts as minus infinity).

    Args:
        pool_size: K, an int or a pair. stride: S, defaults to K. padding: as in :class:`Conv2d`
        (an int, a pair, ``((top, bottom), (left, right))`` or a mode), each side less than K
        (as ONNX's MaxPool: the max of the input pixels each window sees; every window sees at
        least one). ceil_mode: round the output size up (PyTorch's and ONNX's ``ceil_mode``).

    Output ``H2 = floor((H + P_before + P_after - K)/S) + 1``, the lecture's ``(H - K)/S + 1``
    without padding; with ``ceil_mode=True`` ``ceil(...) + 1``, less one when that last window
    would start in the padding after the input (:func:`cnnkit.arithmetic.ceil_mode_windows`).
    """

    def cached_per_sample(self) -> int:
        return self.activations()  # the index of each maximum

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # the winning tap of each window, in the smallest unsigned dtype that holds Kh*Kw taps
        taps = self._windows[0].kernel * self._windows[1].kernel
        return CallMemory(keeps_bytes=self.activations() * np.min_scalar_type(taps - 1).itemsize)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """``(B, H, W, C) -> (B, H2, W2, C)``; in training, keep which tap won each window."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y, winners = max_pool2d(x, self._windows, with_indices=training)
        return y, ((winners, x.shape) if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Each output gradient goes to the input pixel that was the maximum."""
        winners, input_shape = context
        self.check_grad(dy, (input_shape[0], *self.output_shape))
        return max_pool2d_backward(dy, winners, self._windows, input_shape)


class AvgPool2d(_Pool2d):
    """Average pooling: the mean over each K x K window.

    Arguments and output size as :class:`MaxPool2d`. ``count_include_pad=False`` (default)
    divides by the number of real input pixels in the window, ``True`` by K*K (PyTorch's and
    ONNX's two conventions). Padding is less than K, so every window sees at least one input
    pixel. With ``ceil_mode=True`` the last window may reach past the padded input; that
    overhang is never counted, not even with ``count_include_pad=True`` (PyTorch's rule, which
    ONNX Runtime follows; ONNX's reference evaluator, onnx 1.23, differs for strides of 3 and more).
    """

    def __init__(self, pool_size=2, stride=None, padding=0, count_include_pad: bool = False,
                 ceil_mode: bool = False, name: str | None = None):
        super().__init__(pool_size, stride, padding, ceil_mode, name)
        self.count_include_pad = count_include_pad

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """``(B, H, W, C) -> (B, H2, W2, C)``; backward needs only the input shape."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = avg_pool2d(x, self._windows, self.count_include_pad)
        return y, (x.shape if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Each output gradient is shared among the pixels of its window."""
        input_shape = context
        self.check_grad(dy, (input_shape[0], *self.output_shape))
        return avg_pool2d_backward(dy, self._windows, input_shape, self.count_include_pad)


class _GlobalPool2d(Layer):
    """Pools each channel over the whole H x W plane, giving a vector of C values."""

    fresh_output = True

    def _build(self, input_shape, rng):
        _, _, c = self._require_volume(input_shape)
        return (c,)

    def receptive_field(self, field):
        h, w, _ = self.input_shape
        return field[0].covering(h), field[1].covering(w)


class GlobalAvgPool2d(_GlobalPool2d):
    """Global average pooling: ``(B, H, W, C) -> (B, C)``."""

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The mean of each channel; backward needs only the input shape."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        return global_avg_pool2d(x), (x.shape if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Each pixel receives ``dy / (H*W)``."""
        input_shape = context
        self.check_grad(dy, (input_shape[0], *self.output_shape))
        return global_avg_pool2d_backward(dy, input_shape)


class GlobalMaxPool2d(_GlobalPool2d):
    """Global max pooling: ``(B, H, W, C) -> (B, C)``."""

    def cached_per_sample(self) -> int:
        return self.activations()

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(keeps_bytes=self.activations() * np.dtype(np.intp).itemsize)   # argmax positions

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The max of each channel; in training, keep where each maximum was."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y, positions = global_max_pool2d(x, with_indices=training)
        return y, ((positions, x.shape) if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """Each channel's gradient goes to the pixel that held its maximum."""
        positions, input_shape = context
        self.check_grad(dy, (input_shape[0], *self.output_shape))
        return global_max_pool2d_backward(dy, positions, input_shape)
