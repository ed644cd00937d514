"""MobileNetV2 as ``keras.applications.MobileNetV2`` builds it: Keras's layout, a graph of the functional API.

The network is the paper's, as torchvision's (:mod:`cnnkit.models.mobilenet`), but laid out as
Keras writes it, which changes numbers, not only names:

- padding: the stem is a 3x3/2 convolution with ``"same"`` padding (TensorFlow's rule: on an even
  input the odd row and column go after, none before); a strided depthwise convolution is valid,
  after a ``ZeroPadding2D`` of Keras's ``correct_pad``: ``((H % 2, 1), (W % 2, 1))``, so
  ``((0, 1), (0, 1))`` on an even volume (torchvision pads one on every side);
- batch norm has eps 1e-3 and Keras's momentum 0.999 (cnnkit's ``momentum=0.001``: cnnkit weighs
  the new batch, Keras the running value); no convolution has a bias;
- widths by Keras's rounding of ``alpha`` (here ``width_mult``): the stem
  ``make_divisible(32 * alpha)``, a block's projection ``make_divisible(int(c * alpha))`` (Keras
  truncates before rounding; torchvision does not), its expansion ``t * C`` exactly, the last
  convolution 1280, or ``make_divisible(1280 * alpha)`` for ``alpha > 1``;
- no dropout before the classifier.

Nodes carry Keras's layer names, so a Keras weights file maps one layer to one layer and the
features Keras users name are addressable (``model.features(x, "block_13_expand_relu")``):

- stem: ``input_layer``, ``Conv1``, ``bn_Conv1``, ``Conv1_relu``;
- the first block (t = 1): ``expanded_conv_depthwise``, ``_depthwise_BN``, ``_depthwise_relu``,
  ``_project``, ``_project_BN``;
- block ``n`` (1 to 16): ``block_n_expand``, ``_expand_BN``, ``_expand_relu``, ``_pad`` (strided
  blocks), ``_depthwise``, ``_depthwise_BN``, ``_depthwise_relu``, ``_project``, ``_project_BN``
  and ``_add`` where the block adds its input;
- last convolution: ``Conv_1``, ``Conv_1_bn``, ``out_relu``;
- top: ``global_average_pooling2d`` and ``predictions`` (dense), with ``prob`` (softmax) after it
  for ``classifier_activation="softmax"`` (Keras puts the softmax inside ``predictions``; cnnkit
  keeps the scores addressable); without the top, ``pooling`` adds ``global_average_pooling2d``
  or ``global_max_pooling2d`` (Keras's default names for these unnamed layers; Keras numbers them
  ``global_average_pooling2d_1`` ... in a session that built such layers before, and as they hold
  no weights no file depends on it).

Keras's ImageNet weights expect ``tf`` preprocessing: RGB pixels scaled to [-1, 1]
(``x / 127.5 - 1``).
"""

from __future__ import annotations

from ..graph import Input, SymbolicTensor
from ..layers import (Add, BatchNorm2d, Conv2d, Dense, DepthwiseConv2d, GlobalAvgPool2d, GlobalMaxPool2d, ReLU6,
                      Softmax, ZeroPadding2d)
from ..model import Model
from .inverted_residuals import INVERTED_RESIDUAL_SETTING, LAST_CHANNELS, STEM_CHANNELS, make_divisible

BN_EPS, BN_MOMENTUM = 1e-3, 0.001
#: the mode Keras's ImageNet weights were trained with (pixels scaled to [-1, 1])
PREPROCESSING = "tf"


def keras_widths(width_mult: float) -> tuple[int, list[int], int]:
    """The stem's filters, each block's projection filters and the last convolution's, rounded as
    ``keras.applications.MobileNetV2`` rounds ``alpha``."""
    blocks = [make_divisible(int(c * width_mult))
              for _, c, repeats, _ in INVERTED_RESIDUAL_SETTING for _ in range(repeats)]
    last = make_divisible(LAST_CHANNELS * width_mult) if width_mult > 1.0 else LAST_CHANNELS
    return make_divisible(STEM_CHANNELS * width_mult), blocks, last


def keras_mobilenet_graph(width_mult: float, input_shape, include_top: bool, pooling, num_classes: int,
                          classifier_activation, seed, strict: bool) -> Model:
    """The graph of ``keras.applications.MobileNetV2(alpha=width_mult)`` (see the module doc); the
    caller has checked the options and chosen whether the weights are allocated."""
    stem, projections, last = keras_widths(width_mult)
    image = Input(input_shape, name="input_layer")
    x = Conv2d(stem, 3, stride=2, padding="same", use_bias=False, init="he", name="Conv1")(image)
    x = ReLU6(name="Conv1_relu")(_norm(x, "bn_Conv1"))
    strides = [s if repeat == 0 else 1 for _, _, n, s in INVERTED_RESIDUAL_SETTING for repeat in range(n)]
    expansions = [t for t, _, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n)]
    for block, (filters, stride, expansion) in enumerate(zip(projections, strides, expansions)):
        x = _inverted_res_block(x, filters, stride, expansion, block)
    x = Conv2d(last, 1, use_bias=False, init="he", name="Conv_1")(x)
    x = ReLU6(name="out_relu")(_norm(x, "Conv_1_bn"))
    if include_top:
        x = Dense(num_classes, name="predictions")(GlobalAvgPool2d(name="global_average_pooling2d")(x))
        if classifier_activation == "softmax":
            x = Softmax(name="prob")(x)
    elif pooling == "avg":
        x = GlobalAvgPool2d(name="global_average_pooling2d")(x)
    elif pooling == "max":
        x = GlobalMaxPool2d(name="global_max_pooling2d")(x)
    return Model(image, x, name="mobilenet_v2", seed=seed, strict=strict)


def _norm(x: SymbolicTensor, name: str) -> SymbolicTensor:
    return BatchNorm2d(momentum=BN_MOMENTUM, eps=BN_EPS, name=name)(x)


def correct_pad(x: SymbolicTensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras's ``correct_pad`` for a 3x3 window of stride 2: one row and column after, and one
    before on an odd side (``((H % 2, 1), (W % 2, 1))``), what ``"same"`` pads."""
    height, width, _ = x.shape
    return (height % 2, 1), (width % 2, 1)


def _inverted_res_block(x: SymbolicTensor, filters: int, stride: int, expansion: int, block: int) -> SymbolicTensor:
    """Keras's ``_inverted_res_block``: ``block_{block}_...``, or ``expanded_conv_...`` for block 0
    (which has no expansion)."""
    inputs, channels = x, x.shape[-1]
    prefix = f"block_{block}_" if block else "expanded_conv_"
    if block:
        x = Conv2d(expansion * channels, 1, use_bias=False, init="he", name=f"{prefix}expand")(x)
        x = ReLU6(name=f"{prefix}expand_relu")(_norm(x, f"{prefix}expand_BN"))
    if stride == 2:
        x = ZeroPadding2d(correct_pad(x), name=f"{prefix}pad")(x)
    x = DepthwiseConv2d(3, stride=stride, padding=1 if stride == 1 else 0, use_bias=False, init="he",
                        name=f"{prefix}depthwise")(x)
    x = ReLU6(name=f"{prefix}depthwise_relu")(_norm(x, f"{prefix}depthwise_BN"))
    x = Conv2d(filters, 1, use_bias=False, init="glorot", name=f"{prefix}project")(x)
    x = _norm(x, f"{prefix}project_BN")
    if channels == filters and stride == 1:
        return Add(name=f"{prefix}add")([inputs, x])
    return x
