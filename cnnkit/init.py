"""Named, seeded initialisers: He for layers followed by ReLU, Glorot for the rest.

Every initialiser draws from an explicit :class:`numpy.random.Generator`, so the same seed
builds the same network (there is no global random state in cnnkit).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .parameter import describing, placeholder_array

INITIALISERS = ("he", "glorot")


def he_normal(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """Normal with std ``sqrt(2 / fan_in)`` (He et al. 2015), which keeps ReLU activations' variance."""
    weight = rng.standard_normal(shape, dtype=np.float32)
    weight *= np.float32(np.sqrt(2.0 / fan_in))
    return weight


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on ``±sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio 2010)."""
    limit = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))
    weight = rng.random(shape, dtype=np.float32)
    weight *= 2 * limit
    weight -= limit
    return weight


def initial_weight(scheme: str, shape: tuple[int, ...], fan_in: int, fan_out: int,
                   rng: np.random.Generator, layer: str) -> np.ndarray:
    """A weight array drawn with the named scheme (``"he"`` or ``"glorot"``); a placeholder that
    draws nothing inside :func:`cnnkit.parameter.describing_only`."""
    if scheme in INITIALISERS and describing():
        return placeholder_array(shape)
    if scheme == "he":
        return he_normal(shape, fan_in, rng)
    if scheme == "glorot":
        return glorot_uniform(shape, fan_in, fan_out, rng)
    raise ConfigError(f"{layer}: init must be one of {INITIALISERS}; received init={scheme!r}")
