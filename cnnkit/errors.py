"""The errors a user can cause, each a :class:`CnnkitError`.

Messages say what was wrong, the value received, and what to do about it, so a user
never has to decode a NumPy broadcasting error.
"""


class CnnkitError(Exception):
    """Base class of every error that bad input to cnnkit can raise."""


class ConfigError(CnnkitError, ValueError):
    """An impossible hyper-parameter or layer configuration, found at build time."""


class ShapeError(CnnkitError, ValueError):
    """An input array whose shape, size, dtype or channel count does not fit the layer or model."""


class WeightsError(CnnkitError):
    """A weights file or state dict that cannot be read or does not fit the model."""


class DataError(CnnkitError):
    """A data set, image or label that cannot be read or used."""


class OnnxError(WeightsError):
    """An ONNX file that cannot be read or converted, or a model that cannot be exported to ONNX."""
