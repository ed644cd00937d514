"""Layers: each a small class that builds, counts and computes one volume-to-volume function."""

from .activation import Clip, Elu, HardSigmoid, HardSwish, LeakyReLU, Maxout, PReLU, ReLU, ReLU6, Sigmoid, Tanh
from .base import Layer
from .conv import Conv2d, DepthwiseConv2d
from .dense import Dense, Dropout, Flatten, channels_first_dense_to_last
from .merge import Add, Concatenate, Identity, Merge, Multiply, Subtract
from .norm import BatchNorm2d
from .padding import Padding2d, ZeroPadding2d
from .pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from .reshape import Permute, Reshape
from .rescaling import Rescaling
from .softmax import LogSoftmax, Softmax
from .transposed import Conv2dTranspose
from .upsampling import UpSampling2d

LAYER_CLASSES = {cls.__name__: cls for cls in (
    Conv2d, DepthwiseConv2d, Conv2dTranspose, UpSampling2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d,
    ZeroPadding2d, ReLU, ReLU6, LeakyReLU, PReLU, Sigmoid, Tanh, Maxout, Flatten, Dense, Dropout, BatchNorm2d, Softmax,
    Add, Concatenate, Multiply, Identity, Elu, HardSigmoid, HardSwish, Clip, LogSoftmax,
    Padding2d, Reshape, Permute, Subtract, Rescaling)}

__all__ = ["LAYER_CLASSES", "Layer", "Conv2d", "DepthwiseConv2d", "Conv2dTranspose", "UpSampling2d", "MaxPool2d",
           "AvgPool2d", "GlobalAvgPool2d", "GlobalMaxPool2d", "ZeroPadding2d", "ReLU", "ReLU6", "LeakyReLU", "PReLU",
           "Sigmoid", "Tanh", "Maxout", "Flatten", "Dense", "Dropout", "BatchNorm2d", "Softmax", "Add", "Concatenate",
           "Multiply", "Identity", "Merge", "Elu", "HardSigmoid", "HardSwish", "Clip", "LogSoftmax",
           "channels_first_dense_to_last", "register_layer",
           "Padding2d", "Reshape", "Permute", "Subtract", "Rescaling"]


def register_layer(cls):
    """Class decorator: make a custom :class:`Layer` subclass loadable from model files by its
    class name (``@cnnkit.register_layer``). Files name classes; only registered ones are built."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer expects a Layer subclass; received {cls!r}")
    known = LAYER_CLASSES.get(cls.__name__)
    if known is not None and known is not cls:
        from ..errors import ConfigError
        raise ConfigError(f"register_layer: a layer class named {cls.__name__!r} is already registered "
                          f"({known.__module__}); give the class another name")
    LAYER_CLASSES[cls.__name__] = cls
    return cls
