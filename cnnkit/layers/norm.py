"""Batch normalisation over the channels of a volume."""

from __future__ import annotations

import numpy as np

from ..arithmetic import batchnorm_params
from ..errors import ConfigError
from ..parameter import Parameter
from .base import Layer


class BatchNorm2d(Layer):
    """Batch norm (Ioffe and Szegedy 2015) per channel, as PyTorch's ``BatchNorm2d``.

    Training normalises with the batch's mean and (biased) variance and updates the running
    statistics with ``running = (1 - momentum) * running + momentum * batch`` (the unbiased
    variance); inference uses the running statistics. Parameters: ``weight`` (gamma) and ``bias``
    (beta) are learned (2C); ``running_mean`` and ``running_var`` are buffers, saved but not
    learned (2C).
    Works on volumes ``(B, H, W, C)`` and on vectors ``(B, C)``.
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        for argument, value in (("momentum", momentum), ("eps", eps)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name or 'BatchNorm2d'}: {argument} must be a number in [0, 1]; "
                                  f"received {argument}={value!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)

    def _build(self, input_shape, rng):
        channels = input_shape[-1]
        self._params = {
            "weight": Parameter(np.ones(channels, np.float32)),
            "bias": Parameter(np.zeros(channels, np.float32)),
        }
        self._buffers = {"running_mean": np.zeros(channels, np.float32),
                         "running_var": np.ones(channels, np.float32)}
        return input_shape

    def param_count(self) -> int:
        return batchnorm_params(self.input_shape[-1])[0]

    def cached_per_sample(self) -> int:
        return self.activations()  # the normalised input
