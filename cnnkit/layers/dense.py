"""Fully connected, flatten and dropout layers."""

from __future__ import annotations

import numpy as np

from ..arithmetic import check_positive, dense_macs, dense_params
from ..errors import ConfigError, ShapeError
from ..init import initial_weight
from ..parameter import Parameter
from .base import Layer


class Flatten(Layer):
    """``(B, H, W, C) -> (B, H*W*C)`` in channels-last order (a view, no copy).

    A dense layer trained after a channels-first flatten (PyTorch, Caffe: index ``c*H*W + h*W + w``)
    maps onto this one by permuting its input rows: ``W_cl = W_cf.reshape(C, H, W, out)
    .transpose(1, 2, 0, 3).reshape(H*W*C, out)``; see :func:`cnnkit.layers.channels_first_dense_to_last`.
    """

    in_place = True

    def _build(self, input_shape, rng):
        return (int(np.prod(input_shape)),)

    def receptive_field(self, field):
        # whatever follows a flattened volume mixes all of it: each unit sees the whole input
        h, w, _ = self.input_shape if len(self.input_shape) == 3 else (1, 1, 1)
        return field[0].covering(h), field[1].covering(w)


class Dense(Layer):
    """Fully connected: ``y = x @ weight + bias`` with ``weight`` (in, units) and ``bias`` (units,).

    Learnable parameters: ``in*units + units``.
    """

    def __init__(self, units: int, use_bias: bool = True, init: str = "auto", name: str | None = None):
        super().__init__(name)
        self.units = units
        self.use_bias = use_bias
        self.init = init

    def _build(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ShapeError(f"{self.label}: expects a flat vector per sample; received input shape "
                             f"{input_shape}; put Flatten() or a global pooling layer before it")
        if not isinstance(self.units, int) or isinstance(self.units, bool):
            raise ConfigError(f"{self.label}: units must be an int; received units={self.units!r}")
        check_positive(self.units, "units", self.label, "the number of output neurons")
        fan_in = input_shape[0]
        scheme = self.init_scheme if self.init == "auto" else self.init
        self._params = {"weight": Parameter(initial_weight(scheme, (fan_in, self.units), fan_in, self.units,
                                                           rng, self.label))}
        if self.use_bias:
            self._params["bias"] = Parameter(np.zeros(self.units, np.float32))
        return (self.units,)

    def param_count(self) -> int:
        return dense_params(self.input_shape[0], self.units, self.use_bias)

    def macs(self) -> int:
        return dense_macs(self.input_shape[0], self.units)

    def cached_per_sample(self) -> int:
        return self.input_shape[0]


class Dropout(Layer):
    """Inverted dropout: in training, zero each activation with probability ``rate`` and scale the
    rest by ``1 / (1 - rate)``; in inference, the identity. Masks come from a seeded generator."""

    in_place = True

    def __init__(self, rate: float = 0.5, seed: int | None = None, name: str | None = None):
        super().__init__(name)
        if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{name or 'Dropout'}: rate must be in [0, 1); received rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def cached_per_sample(self) -> int:
        return self.activations()
