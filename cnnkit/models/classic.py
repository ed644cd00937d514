"""Other classic architectures the lecture cites: LeNet-5, AlexNet and All-CNN-C.

Every architecture function takes ``allocate=False`` to build a description only (no weights).
"""

from __future__ import annotations

from ..layers import (AvgPool2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d, MaxPool2d, ReLU, Softmax,
                      Tanh)
from ..model import Sequential


def _built(model: Sequential, input_shape: tuple[int, ...], allocate: bool = True) -> Sequential:
    """``model`` built for ``input_shape``; with ``allocate=False`` as a description only: its
    weights are placeholders that take no memory (enough for a summary; it cannot compute)."""
    model.build(input_shape, allocate=allocate)
    return model


def lenet5(input_shape: tuple[int, int, int] = (32, 32, 1), num_classes: int = 10, seed: int | None = 0,
           allocate: bool = True) -> Sequential:
    """LeNet-5 (LeCun et al. 1998) with tanh and average pooling (61,706 parameters at 10 classes).

    The original's partial C3 connection table and RBF output are replaced by full
    connections and a dense layer, as in most modern reproductions.
    """
    layers = [Conv2d(6, 5, name="c1"), Tanh(name="tanh1"), AvgPool2d(2, name="s2"),
              Conv2d(16, 5, name="c3"), Tanh(name="tanh3"), AvgPool2d(2, name="s4"),
              Conv2d(120, 5, name="c5"), Tanh(name="tanh5"), Flatten(name="flatten"),
              Dense(84, name="f6"), Tanh(name="tanh6"), Dense(num_classes, name="output"),
              Softmax(name="prob")]
    return _built(Sequential(layers, seed=seed, name="lenet5"), input_shape, allocate)


def alexnet(input_shape: tuple[int, int, int] = (227, 227, 3), num_classes: int = 1000, seed: int | None = 0,
            allocate: bool = True) -> Sequential:
    """AlexNet (Krizhevsky et al. 2012) as one tower: conv1 has the lecture's 96 filters of 11x11x3.

    Local response normalisation is left out (later work found it adds nothing), and the two
    GPU groups are merged, so the count is 62,378,344 parameters at 1000 classes.
    """
    layers = [Conv2d(96, 11, stride=4, name="conv1"), ReLU(name="relu1"), MaxPool2d(3, 2, name="pool1"),
              Conv2d(256, 5, padding=2, name="conv2"), ReLU(name="relu2"), MaxPool2d(3, 2, name="pool2"),
              Conv2d(384, 3, padding=1, name="conv3"), ReLU(name="relu3"),
              Conv2d(384, 3, padding=1, name="conv4"), ReLU(name="relu4"),
              Conv2d(256, 3, padding=1, name="conv5"), ReLU(name="relu5"), MaxPool2d(3, 2, name="pool5"),
              Flatten(name="flatten"),
              Dense(4096, name="fc6"), ReLU(name="relu6"), Dropout(0.5, name="drop6"),
              Dense(4096, name="fc7"), ReLU(name="relu7"), Dropout(0.5, name="drop7"),
              Dense(num_classes, name="fc8"), Softmax(name="prob")]
    return _built(Sequential(layers, seed=seed, name="alexnet"), input_shape, allocate)


def allconv(input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10, seed: int | None = 0,
            allocate: bool = True) -> Sequential:
    """All-CNN-C (Springenberg et al. 2014): stride-2 convolutions replace pooling, global average at the end."""
    spec = [(96, 3, 1, 1), (96, 3, 1, 1), (96, 3, 2, 1), (192, 3, 1, 1), (192, 3, 1, 1), (192, 3, 2, 1),
            (192, 3, 1, 0), (192, 1, 1, 0), (num_classes, 1, 1, 0)]
    layers = []
    for index, (filters, kernel, stride, padding) in enumerate(spec, start=1):
        layers += [Conv2d(filters, kernel, stride=stride, padding=padding, name=f"conv{index}"),
                   ReLU(name=f"relu{index}")]
    layers += [GlobalAvgPool2d(name="global_pool"), Softmax(name="prob")]
    return _built(Sequential(layers, seed=seed, name="allconv"), input_shape, allocate)
