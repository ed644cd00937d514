"""ResNet as ``keras.applications`` builds it (ResNet50, ResNet101, ResNet152): ResNet v1 in Keras's
layout, a graph of the functional API.

This is the paper's ResNet v1, not torchvision's v1.5 (:mod:`cnnkit.models.resnet`): a
bottleneck's stride is on its FIRST 1x1 convolution (and on the shortcut's), its 3x3 convolution
has stride 1. Every convolution has a bias; batch norm has eps 1.001e-5 and Keras's momentum 0.99
(cnnkit's ``momentum=0.01``: cnnkit weighs the new batch, Keras the running value). The stem pads
with zeros before its valid convolution and its pooling, as Keras writes it: ``ZeroPadding2D(3)``,
the 7x7/2 convolution, batch norm, ReLU, ``ZeroPadding2D(1)``, 3x3/2 max pooling. Block ``b`` of
stage ``s`` (``s`` from 2 to 5, as Keras numbers them) is ``1x1 -> 3x3 -> 1x1`` (64, 64, 256 filters
times ``2 ** (s - 2)``); the first block of each stage has a convolution shortcut (1x1 and batch
norm), the others add their input. Then global average pooling and the classifier.

Nodes carry Keras's layer names, so a Keras weights file maps one layer to one layer and the
features Keras users name are addressable (``model.features(x, "conv4_block6_out")``):

- stem: ``conv1_pad``, ``conv1_conv``, ``conv1_bn``, ``conv1_relu``, ``pool1_pad``, ``pool1_pool``;
- block: ``conv3_block1_1_conv``, ``_1_bn``, ``_1_relu``, ``_2_conv``, ``_2_bn``, ``_2_relu``,
  ``_3_conv``, ``_3_bn``, the shortcut ``_0_conv`` and ``_0_bn`` in a stage's first block,
  ``_add``, and the block's output ``_out`` (its ReLU);
- top: ``avg_pool`` (global average) and ``predictions`` (dense), with ``prob`` (softmax) after
  it for ``classifier_activation="softmax"`` (Keras puts the softmax inside ``predictions``; cnnkit
  keeps the scores addressable); without the top, ``pooling`` adds ``avg_pool`` or ``max_pool``.

Keras's ImageNet weights expect ``caffe`` preprocessing: BGR, the ImageNet mean subtracted, no
scaling.
"""

from __future__ import annotations

from ..graph import Input, SymbolicTensor
from ..layers import (Add, BatchNorm2d, Conv2d, Dense, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, ReLU, Softmax,
                      ZeroPadding2d)
from ..model import Model
from .options import scaled

#: depth -> blocks of the stages conv2 ... conv5, as keras.applications.ResNet50/101/152
KERAS_RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_FILTERS = (64, 128, 256, 512)   # a bottleneck's 1x1 and 3x3; its last 1x1 has four times more
BN_EPS, BN_MOMENTUM = 1.001e-5, 0.01
#: the mode Keras's ImageNet weights were trained with (the Caffe release's BGR mean subtraction)
PREPROCESSING = "caffe"


def keras_resnet_graph(depth: int, include_top: bool, num_classes: int, input_shape, pooling,
                       classifier_activation, width: float, seed, strict: bool) -> Model:
    """The graph of ``keras.applications.ResNet{depth}`` (see the module doc); the caller has checked
    the options and chosen whether the weights are allocated."""
    image = Input(input_shape, name="input_layer")
    x = ZeroPadding2d(3, name="conv1_pad")(image)
    x = _conv_bn(x, scaled(64, width), 7, 2, "conv1")
    x = ReLU(name="conv1_relu")(x)
    x = MaxPool2d(3, 2, name="pool1_pool")(ZeroPadding2d(1, name="pool1_pad")(x))
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, KERAS_RESNET_BLOCKS[depth]), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if stage > 2 and block == 1 else 1
            x = _block(x, scaled(filters, width), stride, block == 1, f"conv{stage}_block{block}")
    if include_top:
        x = Dense(num_classes, name="predictions")(GlobalAvgPool2d(name="avg_pool")(x))
        if classifier_activation == "softmax":
            x = Softmax(name="prob")(x)
    elif pooling == "avg":
        x = GlobalAvgPool2d(name="avg_pool")(x)
    elif pooling == "max":
        x = GlobalMaxPool2d(name="max_pool")(x)
    return Model(image, x, name=f"resnet{depth}", seed=seed, strict=strict)


def _conv_bn(x: SymbolicTensor, filters: int, kernel: int, stride: int, name: str,
             padding: int = 0) -> SymbolicTensor:
    """``{name}_conv`` with a bias and its batch norm ``{name}_bn``. Keras's convolutions are valid
    (the stem's after its own padding layer) but for the 3x3's ``same`` at stride 1: ``padding=1``."""
    y = Conv2d(filters, kernel, stride=stride, padding=padding, use_bias=True, init="he", name=f"{name}_conv")(x)
    return BatchNorm2d(momentum=BN_MOMENTUM, eps=BN_EPS, name=f"{name}_bn")(y)


def _block(x: SymbolicTensor, filters: int, stride: int, conv_shortcut: bool, name: str) -> SymbolicTensor:
    """Keras's ``block1``: a v1 bottleneck (stride on the first 1x1) plus its shortcut, then ReLU."""
    y = ReLU(name=f"{name}_1_relu")(_conv_bn(x, filters, 1, stride, f"{name}_1"))
    y = ReLU(name=f"{name}_2_relu")(_conv_bn(y, filters, 3, 1, f"{name}_2", padding=1))
    y = _conv_bn(y, 4 * filters, 1, 1, f"{name}_3")
    shortcut = _conv_bn(x, 4 * filters, 1, stride, f"{name}_0") if conv_shortcut else x
    return ReLU(name=f"{name}_out")(Add(name=f"{name}_add")([shortcut, y]))
