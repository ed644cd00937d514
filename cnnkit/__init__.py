"""cnnkit: convolutional neural networks from first principles on NumPy."""

from . import arithmetic, layers, models, optim
from .errors import CnnkitError, ConfigError, DataError, OnnxError, ShapeError, WeightsError
from .checkpoint import load
from .gradcheck import GradcheckResult, gradcheck
from .graph import Input
from .layers import register_layer
from .model import Model, Sequential
from .ops.runtime import runtime
from .parameter import Parameter

__version__ = "0.1.0"

__all__ = ["Input", "Model", "Sequential", "register_layer", "load", "Parameter", "runtime", "CnnkitError", "ConfigError", "ShapeError", "WeightsError", "DataError", "OnnxError",
           "arithmetic", "layers", "models", "optim", "gradcheck", "GradcheckResult", "__version__"]
