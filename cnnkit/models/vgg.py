"""The VGG family (Simonyan and Zisserman 2014): configurations A, B, C, D and E.

Names follow the Caffe release, so weight files of every framework map onto them:
``conv1_1`` ... ``conv5_3``, ``relu1_1`` ..., ``pool1`` ... ``pool5``, ``fc6``, ``fc7``, ``fc8``.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..layers import (BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d,
                      ReLU, Softmax)
from ..model import Sequential
from .options import check_options, check_weights_allocated, scaled

# Per block: the kernel size of each convolution (3, or 1 for config C's 1x1 layers).
# Channels per block are 64, 128, 256, 512, 512 in every configuration.
VGG_CONFIGS = {
    "A": ((3,), (3,), (3, 3), (3, 3), (3, 3)),
    "B": ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
    "C": ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1)),
    "D": ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    "E": ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)),
}
BLOCK_CHANNELS = (64, 128, 256, 512, 512)


def vgg(config: str, batch_norm: bool = False, include_top: bool = True, num_classes: int = 1000,
        input_shape: tuple[int, int, int] = (224, 224, 3), pooling: str | None = None,
        classifier_activation: str | None = "softmax", width: float = 1.0, dropout: float = 0.5,
        seed: int | None = 0, strict: bool = False, weights: str | None = None, allocate: bool = True) -> Sequential:
    """A VGG network of configuration ``config`` ("A", "B", "C", "D" or "E").

    Args:
        batch_norm: put ``BatchNorm2d`` after every convolution (the ``_bn`` variants).
        include_top: keep fc6, fc7, fc8; without them the network ends at pool5 (or the pooling).
        num_classes: units of fc8.
        input_shape: the input volume; VGG was trained on 224 x 224 x 3.
        pooling: for ``include_top=False``, ``"avg"`` or ``"max"`` global pooling after pool5.
        classifier_activation: ``"softmax"`` ends in a softmax layer (``prob``); ``None`` gives scores.
        width: multiplies every channel and fc width (small widths keep tests fast).
        dropout: dropout rate after fc6 and fc7.
        weights: a weights file to load: torchvision or timm ``.pth``, Keras ``.h5``, Keras 3
            ``.weights.h5`` or ``.keras``, a cnnkit model file or safetensors; see
            :func:`cnnkit.io.load_pretrained`.
        allocate: ``False`` builds a description only: the weights are placeholders that take no
            memory and draw no random numbers (what ``cnnkit summary`` needs); it cannot compute.
    """
    if config not in VGG_CONFIGS:
        raise ConfigError(f"vgg: config must be one of {sorted(VGG_CONFIGS)}; received config={config!r}")
    check_options("vgg", include_top, pooling, classifier_activation, width)
    check_weights_allocated("vgg", weights, allocate)
    layers = _features(VGG_CONFIGS[config], batch_norm, width)
    if include_top:
        layers += _classifier(num_classes, classifier_activation, width, dropout)
    elif pooling is not None:
        layers.append((GlobalAvgPool2d if pooling == "avg" else GlobalMaxPool2d)(name="global_pool"))
    name = {"A": "vgg11", "B": "vgg13", "C": "vgg16c", "D": "vgg16", "E": "vgg19"}[config]
    model = Sequential(layers, seed=seed, strict=strict, name=name + ("_bn" if batch_norm else ""))
    model.build(input_shape, allocate=allocate)
    if weights is not None:
        from ..io.pretrained import load_pretrained
        load_pretrained(model, weights)
    return model


def _features(blocks, batch_norm: bool, width: float) -> list:
    layers = []
    for block, kernels in enumerate(blocks, start=1):
        channels = scaled(BLOCK_CHANNELS[block - 1], width)
        for index, kernel in enumerate(kernels, start=1):
            tag = f"{block}_{index}"
            layers.append(Conv2d(channels, kernel, padding=kernel // 2, name=f"conv{tag}"))
            if batch_norm:
                layers.append(BatchNorm2d(name=f"bn{tag}"))
            layers.append(ReLU(name=f"relu{tag}"))
        layers.append(MaxPool2d(2, 2, name=f"pool{block}"))
    return layers


def _classifier(num_classes: int, activation: str | None, width: float, dropout: float) -> list:
    hidden = scaled(4096, width)
    layers = [Flatten(name="flatten"),
              Dense(hidden, name="fc6"), ReLU(name="relu6"), Dropout(dropout, name="drop6"),
              Dense(hidden, name="fc7"), ReLU(name="relu7"), Dropout(dropout, name="drop7"),
              Dense(num_classes, name="fc8")]
    if activation == "softmax":
        layers.append(Softmax(name="prob"))
    return layers


def vgg11(**options) -> Sequential:
    """VGG configuration A: 8 convolutions and 3 fully connected layers (132,863,336 parameters)."""
    return vgg("A", **options)


def vgg13(**options) -> Sequential:
    """VGG configuration B: 10 convolutions and 3 fully connected layers (133,047,848 parameters)."""
    return vgg("B", **options)


def vgg16c(**options) -> Sequential:
    """VGG configuration C: VGG13 plus a 1x1 convolution in blocks 3, 4 and 5."""
    return vgg("C", **options)


def vgg16(**options) -> Sequential:
    """VGG configuration D, the lecture's VGG16: 13 convolutions, 3 fully connected, 138,357,544 parameters."""
    return vgg("D", **options)


def vgg19(**options) -> Sequential:
    """VGG configuration E: 16 convolutions and 3 fully connected layers (143,667,240 parameters)."""
    return vgg("E", **options)


def vgg_small(input_shape: tuple[int, int, int] = (8, 8, 1), num_classes: int = 10, widths: tuple[int, ...] = (16, 32),
              dense: int = 64, batch_norm: bool = False, dropout: float = 0.25, seed: int | None = 0,
              allocate: bool = True) -> Sequential:
    """A small VGG-style network sized for small images such as the bundled 8x8 digits.

    One block per entry of ``widths``: two 3x3 convolutions (padding 1) with ReLU, then 2x2 max
    pooling; then ``Dense(dense)``, ReLU, dropout and the classifier with softmax. ``allocate=False``
    builds a description only (no weights).
    """
    layers = []
    for block, channels in enumerate(widths, start=1):
        for index in (1, 2):
            layers.append(Conv2d(channels, 3, padding=1, name=f"conv{block}_{index}"))
            if batch_norm:
                layers.append(BatchNorm2d(name=f"bn{block}_{index}"))
            layers.append(ReLU(name=f"relu{block}_{index}"))
        layers.append(MaxPool2d(2, 2, name=f"pool{block}"))
    layers += [Flatten(name="flatten"), Dense(dense, name="fc1"), ReLU(name="relu_fc1"),
               Dropout(dropout, name="drop1"), Dense(num_classes, name="fc2"), Softmax(name="prob")]
    model = Sequential(layers, seed=seed, name="vgg_small")
    model.build(input_shape, allocate=allocate)
    return model
