"""Layers: each a small class that builds, counts and computes one volume-to-volume function."""

from .activation import LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer
from .conv import Conv2d
from .dense import Dense, Dropout, Flatten
from .norm import BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d

__all__ = ["Layer", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "GlobalMaxPool2d", "ReLU",
           "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "Maxout", "Flatten", "Dense", "Dropout",
           "BatchNorm2d", "Softmax"]
