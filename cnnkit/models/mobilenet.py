"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it, a graph of the functional API.

The stem is a 3x3/2 convolution (padding 1) to 32 channels, batch norm and ReLU6; then 17
inverted residual blocks; then a 1x1 convolution to 1280 channels, batch norm and ReLU6, a global
average pooling, dropout (0.2) and a linear classifier. An inverted residual block of expansion t
widens its C input channels to t*C with a 1x1 convolution (skipped for t = 1), filters each of
them with a 3x3 depthwise convolution of the block's stride, and projects them to its output
channels with a 1x1 convolution and batch norm without activation (the "linear bottleneck"). A
block of stride 1 whose output has its input's channels adds its input. The blocks come in the
paper's groups (t, c, n, s) of :data:`INVERTED_RESIDUAL_SETTING`. Convolutions have no bias;
batch norm has eps 1e-5 and momentum 0.1, as in PyTorch.

Channel counts follow torchvision's width multiplier: ``c * width_mult`` rounded to the nearest
multiple of 8, at least 8 and never below 90% of the value (:func:`make_divisible`); the last
convolution has ``make_divisible(1280 * max(1, width_mult))``. A block's expanded width is
``round(C * t)``, as torchvision's.

Names follow torchvision's modules, so a parameter of a cnnkit MobileNetV2 has the key of the same
array in a torchvision state dict (only the layouts differ; see :mod:`cnnkit.io.mobilenet_layout`):

- stem: ``features.0.0`` (convolution), ``features.0.1`` (batch norm), ``features.0.2`` (ReLU6);
- block ``features.N`` (1 to 17) with t != 1: ``features.N.conv.0.0/.1/.2`` (1x1 expansion, batch
  norm, ReLU6), ``features.N.conv.1.0/.1/.2`` (3x3 depthwise, batch norm, ReLU6),
  ``features.N.conv.2`` (1x1 projection), ``features.N.conv.3`` (batch norm); the t = 1 block
  ``features.1`` has ``conv.0.0/.1/.2`` (depthwise), ``conv.1`` (projection) and ``conv.2`` (batch norm);
- the block's output is named after the block: its ``Add`` where it has a residual, else an
  ``Identity`` after its last batch norm (the batch norm keeps torchvision's name, the key of its
  parameters);
- last convolution: ``features.18.0/.1/.2`` and the ``Identity`` ``features.18``; the ``Identity``
  ``features``, the output of torchvision's ``features`` module;
- top: ``avgpool`` (global average), ``classifier.0`` (dropout) and ``classifier.1`` (linear), with
  ``prob`` (softmax) after it for ``classifier_activation="softmax"``.

So ``model.features(x, "features.13")`` and ``freeze(up_to="features.13")`` work as their names say.

``layout="keras"`` builds instead the MobileNetV2 of ``keras.applications`` (its padding, batch
norm, width rounding and layer names: :mod:`cnnkit.models.keras_mobilenet`); a Keras weights file
given as ``weights=`` chooses it by default.
The depthwise convolutions are ``Conv2d(C, 3, groups=C)``: their weight (3, 3, 1, C) is
torchvision's (C, 1, 3, 3) re-laid out as every other convolution's.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..graph import Input, SymbolicTensor
from ..layers import (Add, BatchNorm2d, Conv2d, Dense, Dropout, GlobalAvgPool2d, GlobalMaxPool2d, Identity, ReLU6,
                      Softmax)
from ..model import Model
from ..parameter import describing_only
from .inverted_residuals import INVERTED_RESIDUAL_SETTING, LAST_CHANNELS, STEM_CHANNELS, make_divisible
from .keras_mobilenet import PREPROCESSING as KERAS_PREPROCESSING
from .keras_mobilenet import keras_mobilenet_graph
from .options import check_options, check_weights_allocated

__all__ = ["INVERTED_RESIDUAL_SETTING", "LAST_CHANNELS", "STEM_CHANNELS", "make_divisible", "mobilenet_v2"]

BN_EPS, BN_MOMENTUM = 1e-5, 0.1
#: the mode torchvision's ImageNet weights were trained with (mean/std of ImageNet on [0, 1] pixels)
PREPROCESSING = "torch"
LAYOUTS = ("torchvision", "keras")
DROPOUT = 0.2


def mobilenet_v2(width_mult: float = 1.0, input_shape: tuple[int, int, int] = (224, 224, 3),
                 include_top: bool = True, pooling: str | None = None, num_classes: int = 1000,
                 classifier_activation: str | None = None, dropout: float | None = None,
                 weights: str | None = None, seed: int | None = 0, strict: bool = False, allocate: bool = True,
                 layout: str | None = None) -> Model:
    """MobileNetV2 in torchvision's layout (see the module doc): 3,504,872 parameters at width 1; or in
    Keras's (``layout="keras"``): 3,504,872 + 34,112 batch-norm statistics, Keras's count of 3,538,984.

    Args:
        width_mult: multiplies every channel count, rounded as the layout's source does
            (:func:`make_divisible`; Keras's ``alpha``, :func:`cnnkit.models.keras_mobilenet.keras_widths`);
            1.0 for the released weights (Keras also released 0.35, 0.5, 0.75, 1.3 and 1.4).
        input_shape: the input volume; the ImageNet weights were trained on 224 x 224 x 3, and any
            size of at least 1 x 1 builds (the stem and four blocks halve it, rounding up).
        include_top: keep ``avgpool``, ``classifier.0`` and ``classifier.1`` (Keras's layout:
            ``global_average_pooling2d`` and ``predictions``); without them the network ends at
            ``features`` (``out_relu``) or at the global pooling of ``pooling``.
        pooling: for ``include_top=False``, ``"avg"`` (node ``avgpool``; Keras's
            ``global_average_pooling2d``) or ``"max"`` (``global_maxpool``; Keras's
            ``global_max_pooling2d``) global pooling after the last convolution.
        num_classes: units of ``classifier.1`` (``predictions``).
        classifier_activation: ``None`` (the default, as torchvision) ends in the classifier's
            scores; ``"softmax"`` adds a softmax node ``prob`` (in both layouts).
        dropout: rate of ``classifier.0``, by default torchvision's 0.2; Keras's layout has no
            dropout and refuses one.
        weights: a weights file to load: a torchvision state dict (``.pth`` zip or legacy,
            ``.safetensors``), a Keras file (``.h5``, ``.weights.h5``, ``.keras``), a cnnkit model
            file or state dict; see :func:`cnnkit.io.load_pretrained`.
        seed: seed of the generator that draws the weights (He-normal convolutions).
        allocate: ``False`` builds a description only: the weights are placeholders that take no
            memory and draw no random numbers (what ``cnnkit summary`` needs); it cannot compute.
        layout: ``"torchvision"`` (torchvision's names and padding, ``torch`` preprocessing) or
            ``"keras"`` (Keras's names, padding and batch norm, ``tf`` preprocessing: pixels
            scaled to [-1, 1]). By default the layout of ``weights``: Keras's for a Keras file
            (told by its content, :func:`cnnkit.io.pretrained.is_keras_file`), else torchvision's.
    """
    label = "mobilenet_v2"
    layout = _layout(label, layout, weights)
    check_options(label, include_top, pooling, classifier_activation, width_mult, width_name="width_mult")
    check_weights_allocated(label, weights, allocate)
    options = {"width_mult": width_mult, "input_shape": input_shape, "include_top": include_top,
               "pooling": pooling, "num_classes": num_classes, "classifier_activation": classifier_activation,
               "seed": seed, "strict": strict}
    if layout == "keras":
        if dropout is not None:
            raise ConfigError(f"{label}: keras.applications' MobileNetV2 has no dropout; received dropout={dropout!r} "
                              f"with layout='keras': drop the argument, or use layout='torchvision'")
        graph = keras_mobilenet_graph
    else:
        dropout = DROPOUT if dropout is None else dropout
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ConfigError(f"{label}: dropout must be a rate in [0, 1); received dropout={dropout!r}")
        options["dropout"] = dropout
        graph = _graph
    if allocate:
        model = graph(**options)
    else:
        with describing_only():
            model = graph(**options)
    model.meta["preprocessing"] = KERAS_PREPROCESSING if layout == "keras" else PREPROCESSING
    if weights is not None:
        from ..io.pretrained import load_pretrained
        load_pretrained(model, weights)
    return model


def _layout(label: str, layout: str | None, weights) -> str:
    """The layout asked for, else the one of the weights file (Keras's for a Keras file)."""
    if layout is None:
        from ..io.pretrained import is_keras_file
        return "keras" if weights is not None and is_keras_file(weights) else "torchvision"
    if layout not in LAYOUTS:
        raise ConfigError(f"{label}: layout must be one of {LAYOUTS}; received layout={layout!r}")
    return layout


def _graph(width_mult, input_shape, include_top, pooling, num_classes, classifier_activation, dropout, seed,
           strict) -> Model:
    image = Input(input_shape, name="input")
    channels = make_divisible(STEM_CHANNELS * width_mult)
    x = Identity(name="features.0")(_conv_bn_relu6(image, channels, 3, 2, "features.0"))
    index = 1
    for expansion, c, blocks, first_stride in INVERTED_RESIDUAL_SETTING:
        out_channels = make_divisible(c * width_mult)
        for block in range(blocks):
            x = _inverted_residual(x, out_channels, first_stride if block == 0 else 1, expansion,
                                   f"features.{index}")
            index += 1
    x = _conv_bn_relu6(x, make_divisible(LAST_CHANNELS * max(1.0, width_mult)), 1, 1, f"features.{index}")
    x = Identity(name="features")(Identity(name=f"features.{index}")(x))
    if include_top:
        x = GlobalAvgPool2d(name="avgpool")(x)
        x = Dense(num_classes, name="classifier.1")(Dropout(dropout, seed=seed, name="classifier.0")(x))
        if classifier_activation == "softmax":
            x = Softmax(name="prob")(x)
    elif pooling == "avg":
        x = GlobalAvgPool2d(name="avgpool")(x)
    elif pooling == "max":
        x = GlobalMaxPool2d(name="global_maxpool")(x)
    return Model(image, x, name="mobilenet_v2", seed=seed, strict=strict)


def _conv_bn(x: SymbolicTensor, filters: int, kernel: int, stride: int, conv: str, norm: str,
             groups: int = 1) -> SymbolicTensor:
    """A convolution without bias (padding ``kernel // 2``) and its batch norm."""
    y = Conv2d(filters, kernel, stride=stride, padding=kernel // 2, use_bias=False, init="he", groups=groups,
               name=conv)(x)
    return BatchNorm2d(momentum=BN_MOMENTUM, eps=BN_EPS, name=norm)(y)


def _conv_bn_relu6(x: SymbolicTensor, filters: int, kernel: int, stride: int, name: str,
                   groups: int = 1) -> SymbolicTensor:
    """torchvision's ``Conv2dNormActivation`` named ``name``: ``name.0`` (convolution), ``name.1``
    (batch norm), ``name.2`` (ReLU6)."""
    y = _conv_bn(x, filters, kernel, stride, f"{name}.0", f"{name}.1", groups)
    return ReLU6(name=f"{name}.2")(y)


def _inverted_residual(x: SymbolicTensor, out_channels: int, stride: int, expansion: int,
                       name: str) -> SymbolicTensor:
    """One inverted residual block named ``name`` (``features.4``); its output is the node ``name``."""
    in_channels = x.shape[-1]
    hidden = int(round(in_channels * expansion))
    parts = 0
    y = x
    if expansion != 1:
        y = _conv_bn_relu6(y, hidden, 1, 1, f"{name}.conv.0")
        parts = 1
    y = _conv_bn_relu6(y, hidden, 3, stride, f"{name}.conv.{parts}", groups=hidden)   # depthwise
    y = _conv_bn(y, out_channels, 1, 1, f"{name}.conv.{parts + 1}", f"{name}.conv.{parts + 2}")
    if stride == 1 and in_channels == out_channels:
        return Add(name=name)([y, x])
    return Identity(name=name)(y)
