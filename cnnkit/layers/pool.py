"""Pooling layers: max and average over K x K windows, and their global forms."""

from __future__ import annotations

from ..arithmetic import unread_rows, window_output_size, windows_2d
from ..errors import ConfigError
from .base import Layer


class _Pool2d(Layer):
    """Shared build of the windowed poolings: each depth slice is pooled independently."""

    def __init__(self, pool_size=2, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.pool_size = pool_size
        self.stride = stride
        self.padding = padding

    def _build(self, input_shape, rng):
        h, w, c = self._require_volume(input_shape)
        stride = self.pool_size if self.stride is None else self.stride
        self._windows = windows_2d((h, w), self.pool_size, stride, self.padding, 1, self.label)
        for win in self._windows:
            if max(win.pad_before, win.pad_after) > win.kernel // 2:
                raise ConfigError(
                    f"{self.label}: padding must be at most half the pool size (K//2 = {win.kernel // 2}), "
                    f"or a window could see only padding; received padding={self.padding!r}")
        out = tuple(window_output_size(size, win, self.label, axis, self.strict)
                    for size, win, axis in zip((h, w), self._windows, "HW"))
        return (*out, c)

    def windows(self):
        return self._windows

    def unread(self):
        return tuple(unread_rows(size, win) for size, win in zip(self.input_shape[:2], self._windows))


class MaxPool2d(_Pool2d):
    """Max pooling: ``h(x, y) = max`` over the K x K window (padding counts as minus infinity).

    Args:
        pool_size: K, an int or a pair. stride: S, defaults to K. padding: as in :class:`Conv2d`,
        at most K//2.

    Output ``H2 = floor((H + 2P - K)/S) + 1``, the lecture's ``(H - K)/S + 1`` without padding.
    """

    def cached_per_sample(self) -> int:
        return self.activations()  # the index of each maximum


class AvgPool2d(_Pool2d):
    """Average pooling: the mean over each K x K window.

    ``count_include_pad=False`` (default) divides by the number of real input pixels in the
    window, ``True`` always by K*K (PyTorch's two conventions).
    """

    def __init__(self, pool_size=2, stride=None, padding=0, count_include_pad: bool = False,
                 name: str | None = None):
        super().__init__(pool_size, stride, padding, name)
        self.count_include_pad = count_include_pad


class _GlobalPool2d(Layer):
    """Pools each channel over the whole H x W plane, giving a vector of C values."""

    def _build(self, input_shape, rng):
        _, _, c = self._require_volume(input_shape)
        return (c,)

    def receptive_field(self, field):
        h, w, _ = self.input_shape
        return field[0].covering(h), field[1].covering(w)


class GlobalAvgPool2d(_GlobalPool2d):
    """Global average pooling: ``(B, H, W, C) -> (B, C)``."""


class GlobalMaxPool2d(_GlobalPool2d):
    """Global max pooling: ``(B, H, W, C) -> (B, C)``."""

    def cached_per_sample(self) -> int:
        return self.activations()
