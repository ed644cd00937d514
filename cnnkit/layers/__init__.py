"""Layers: each a small class that builds, counts and computes one volume-to-volume function."""

from .activation import LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .conv import Conv2d
from .dense import Dense, Dropout, Flatten, channels_first_dense_to_last
from .norm import BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d

LAYER_CLASSES = {cls.__name__: cls for cls in (
    Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, ReLU, LeakyReLU, PReLU, Sigmoid, Tanh, Maxout,
    Flatten, Dense, Dropout, BatchNorm2d, Softmax)}

__all__ = ["LAYER_CLASSES", "Layer", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "GlobalMaxPool2d", "ReLU",
           "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "Maxout", "Flatten", "Dense", "Dropout",
           "BatchNorm2d", "Softmax", "channels_first_dense_to_last"]
