"""`Rescaling`: ``y = x * scale + offset`` with constant ``scale`` and ``offset`` (Keras's layer,
widened to arrays): an input normalisation, or an imported model's broadcast ``Mul``/``Add``."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..parameter import describing, placeholder_array
from .base import Layer

#: the largest rank of a constant: an (H, W, C) volume's
MAX_RANK = 3


class Rescaling(Layer):
    """Scale and shift every input number by constants: ``y = x * scale + offset``.

    Args:
        scale, offset: each a float, or an array (any array-like) that broadcasts to the per-sample
            input shape without growing it, channels last: ``(C,)`` or ``(1, 1, C)`` per channel,
            ``(H, W, C)`` per number, ``(1,)`` for all. In a config (and a model file) an array
            appears as ``{"shape": [...]}``: its numbers are buffers saved with the weights, as
            batch norm's running statistics are, not JSON; such a layer holds ones (scale) and
            zeros (offset) until the weights are loaded.

    Buffers ``scale`` and ``offset`` (float32; a float as a 0-d array) are in the state dict under
    ``<layer>.scale`` and ``<layer>.offset``; they are constants, never trained. Backward:
    ``dx = dy * scale``. No parameters; one multiply-add per number, not counted (as for an
    activation). Keras's ``Rescaling(1/255)`` is ``Rescaling(1/255)``; ImageNet's mean and
    standard deviation are ``Rescaling(1/std, -mean/std)`` with arrays of shape ``(3,)``.
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, scale=1.0, offset=0.0, name: str | None = None):
        super().__init__(name)
        self.scale = _constant(scale, "scale", name or "Rescaling")
        self.offset = _constant(offset, "offset", name or "Rescaling")

    def _build(self, input_shape, rng):
        self._buffers = {"scale": self._allocated(self.scale, "scale", input_shape, 1.0),
                         "offset": self._allocated(self.offset, "offset", input_shape, 0.0)}
        return input_shape

    def _allocated(self, value, argument: str, input_shape, fill: float) -> np.ndarray:
        """The buffer for a constant: its numbers, or ``fill`` for a shape from a config."""
        shape = value.shape if isinstance(value, (np.ndarray, _Shape)) else ()
        aligned = tuple(input_shape)[len(input_shape) - len(shape):]   # NumPy's rule: right-aligned
        if len(shape) > len(input_shape) or not all(v in (1, size) for v, size in zip(shape, aligned)):
            raise ShapeError(f"{self.label}: {argument} of shape {tuple(shape)} does not broadcast to the input "
                             f"{tuple(input_shape)} (channels last) without growing it; use (C,) = "
                             f"({input_shape[-1]},) per channel, {tuple(input_shape)} per number, or a float")
        if describing():
            return placeholder_array(shape)
        if isinstance(value, _Shape):
            return np.full(shape, fill, np.float32)
        return np.array(value, np.float32)

    def buffer_count(self) -> int:
        """Numbers the buffers hold (what a model file must hold for this layer)."""
        return sum(math.prod(value.shape) if isinstance(value, (np.ndarray, _Shape)) else 1
                   for value in (self.scale, self.offset))

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """``x * scale + offset`` as a new array in ``x``'s dtype; the context is the batch size."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        y = x * self._buffers["scale"].astype(x.dtype, copy=False)
        y += self._buffers["offset"].astype(x.dtype, copy=False)
        return y, (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """``dy * scale`` (a new array)."""
        self.check_grad(dy, (context, *self.output_shape))
        return dy * self._buffers["scale"].astype(dy.dtype, copy=False)

    def get_config(self) -> dict:
        """A float as itself; an array as ``{"shape": [...]}``, its numbers kept in the state dict."""
        config = super().get_config()
        for argument in ("scale", "offset"):
            value = self._buffers.get(argument, getattr(self, argument))
            if isinstance(value, (np.ndarray, _Shape)) and value.shape != ():
                config[argument] = {"shape": list(value.shape)}
            else:
                config[argument] = float(value)
        return config

    def __repr__(self) -> str:
        shown = {key: value for key, value in self.get_config().items()
                 if (key, value) not in (("scale", 1.0), ("offset", 0.0), ("trainable", True), ("name", None))}
        return f"Rescaling({', '.join(f'{key}={value!r}' for key, value in shown.items())})"


class _Shape:
    """The shape of a constant whose numbers come with the weights (``{"shape": [...]}`` in a config)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def _constant(value, argument: str, label: str):
    """A float, a float32 array, or a :class:`_Shape` from a config, checked (nothing allocated for a shape)."""
    if isinstance(value, dict):
        shape = value.get("shape") if set(value) == {"shape"} else None
        if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= MAX_RANK
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ConfigError(f"{label}: {argument} as a config gives it must be {{'shape': [...]}}, 1 to "
                              f"{MAX_RANK} sizes >= 1; received {argument}={value!r}")
        return _Shape(tuple(shape))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{label}: {argument} must be finite; received {argument}={value!r}")
        return float(value)
    try:
        array = np.array(value, np.float32)
    except (TypeError, ValueError):
        array = None
    if array is None or isinstance(value, (str, bool)) or array.ndim > MAX_RANK or not np.isfinite(array).all():
        raise ConfigError(f"{label}: {argument} must be a finite float or an array of finite numbers of rank "
                          f"{MAX_RANK} at most; received {argument}={value!r}")
    return float(array) if array.ndim == 0 else array
