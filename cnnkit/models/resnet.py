"""ResNet (He et al. 2015) as torchvision builds it: ResNet v1.5, a graph of the functional API.

v1.5 puts a bottleneck's stride on its 3x3 convolution (the paper's v1 put it on the first 1x1).
The stem is a 7x7/2 convolution (padding 3), batch norm, ReLU and a 3x3/2 max pooling (padding
1); then four stages ``layer1`` ... ``layer4`` of residual blocks (``BasicBlock``: two 3x3
convolutions; ``Bottleneck``: 1x1, 3x3, 1x1 with 4x expansion), each block adding its input to
its branch. The first block of a stage whose output shape differs from its input has a
``downsample`` shortcut (a 1x1 convolution with the stage's stride, and batch norm). Then a
global average pooling and ``fc``. Convolutions have no bias; batch norm has eps 1e-5 and
momentum 0.1, as in PyTorch.

Names follow torchvision's modules, so a parameter of a cnnkit ResNet has the key of the same
array in a torchvision (or timm) state dict (only the layouts differ; see
:mod:`cnnkit.io.pretrained`):

- stem: ``conv1``, ``bn1``, ``relu``, ``maxpool``;
- block ``b`` of stage ``s`` (``layer3.1``): ``layer3.1.conv1``, ``layer3.1.bn1``,
  ``layer3.1.relu1``, ``layer3.1.conv2``, ``layer3.1.bn2``, (bottleneck: ``layer3.1.relu2``,
  ``layer3.1.conv3``, ``layer3.1.bn3``), ``layer3.1.downsample.0`` (conv) and
  ``layer3.1.downsample.1`` (batch norm) where the shape changes, ``layer3.1.add``, and the
  block's output, its final ReLU, named ``layer3.1`` (torchvision reuses one ReLU module per
  block; cnnkit needs one node per use, so the inner ones are ``relu1``/``relu2``);
- each stage's output is an ``Identity`` named after the stage (``layer3``), the output of its
  last block under torchvision's name for it;
- top: ``avgpool`` (global average) and ``fc``, with ``prob`` (softmax) after it for
  ``classifier_activation="softmax"``.

So ``model.features(x, "layer3")``, ``freeze("layer1")`` (every layer of the stage) and
``freeze(up_to="layer2")`` work as their names say.

``layout="keras"`` builds instead the ResNet of ``keras.applications`` (ResNet v1 with convolution
biases, Keras's layer names: :mod:`cnnkit.models.keras_resnet`) for depths 50, 101 and 152; a Keras
weights file given as ``weights=`` chooses it by default.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..graph import Input, SymbolicTensor
from ..layers import (Add, BatchNorm2d, Conv2d, Dense, GlobalAvgPool2d, GlobalMaxPool2d, Identity, MaxPool2d, ReLU,
                      Softmax)
from ..model import Model
from ..parameter import describing_only
from .keras_resnet import KERAS_RESNET_BLOCKS, keras_resnet_graph
from .keras_resnet import PREPROCESSING as KERAS_PREPROCESSING
from .options import check_options, check_weights_allocated, scaled

#: depth -> (block kind, blocks per stage), as torchvision's resnet18 ... resnet152
RESNET_CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
#: the mode torchvision's ImageNet weights were trained with (mean/std of ImageNet on [0, 1] pixels)
PREPROCESSING = "torch"
LAYOUTS = ("torchvision", "keras")


def resnet(depth: int, include_top: bool = True, num_classes: int = 1000,
           input_shape: tuple[int, int, int] = (224, 224, 3), pooling: str | None = None,
           classifier_activation: str | None = None, width: float = 1.0, seed: int | None = 0,
           strict: bool = False, weights: str | None = None, allocate: bool = True,
           layout: str | None = None) -> Model:
    """A ResNet of ``depth`` 18, 34, 50, 101 or 152 in torchvision's layout, or of depth 50, 101 or
    152 in Keras's (see the module doc).

    Args:
        include_top: keep ``avgpool`` and ``fc`` (Keras's layout: ``avg_pool`` and
            ``predictions``); without them the network ends at ``layer4`` (``conv5_block3_out``)
            or at the global pooling of ``pooling``.
        num_classes: units of ``fc`` (``predictions``).
        input_shape: the input volume; the ImageNet weights were trained on 224 x 224 x 3, and any
            size of at least 1 x 1 builds (the stem and each stage halve it, rounding up).
        pooling: for ``include_top=False``, ``"avg"`` (node ``avgpool``; Keras's ``avg_pool``) or
            ``"max"`` (``global_maxpool``; Keras's ``max_pool``) global pooling after the last stage.
        classifier_activation: ``None`` (the default, as torchvision) ends in ``fc``'s scores;
            ``"softmax"`` adds a softmax node ``prob`` (in both layouts).
        width: multiplies every channel count (small widths keep tests fast; 1 for the weights
            of torchvision, timm and Keras).
        seed: seed of the generator that draws the weights (He-normal convolutions, as torchvision).
        weights: a weights file to load: a torchvision or timm state dict (``.pth`` zip or
            legacy, ``.safetensors``), a Keras file (``.h5``, ``.weights.h5``, ``.keras``), a
            cnnkit model file or state dict; see :func:`cnnkit.io.load_pretrained`.
        allocate: ``False`` builds a description only: the weights are placeholders that take no
            memory and draw no random numbers (what ``cnnkit summary`` needs); it cannot compute.
        layout: ``"torchvision"`` (v1.5, torchvision's names and ``torch`` preprocessing) or
            ``"keras"`` (v1 with convolution biases, Keras's names and ``caffe`` preprocessing;
            depths 50, 101, 152). By default the layout of ``weights``: Keras's for a Keras file
            (told by its content, :func:`cnnkit.io.pretrained.is_keras_file`), else torchvision's.
    """
    if depth not in RESNET_CONFIGS:
        raise ConfigError(f"resnet: depth must be one of {sorted(RESNET_CONFIGS)}; received depth={depth!r}")
    label = f"resnet{depth}"
    layout = _layout(label, depth, layout, weights)
    check_options(label, include_top, pooling, classifier_activation, width)
    check_weights_allocated(label, weights, allocate)
    graph = keras_resnet_graph if layout == "keras" else _graph
    arguments = (depth, include_top, num_classes, input_shape, pooling, classifier_activation, width, seed, strict)
    if allocate:
        model = graph(*arguments)
    else:
        with describing_only():
            model = graph(*arguments)
    model.meta["preprocessing"] = KERAS_PREPROCESSING if layout == "keras" else PREPROCESSING
    if weights is not None:
        from ..io.pretrained import load_pretrained
        load_pretrained(model, weights)
    return model


def _layout(label: str, depth: int, layout: str | None, weights) -> str:
    """The layout asked for, else the one of the weights file (Keras's for a Keras file)."""
    if layout is None:
        from ..io.pretrained import is_keras_file
        keras_file = weights is not None and is_keras_file(weights)
        if keras_file and depth not in KERAS_RESNET_BLOCKS:
            raise ConfigError(f"{label}: weights={str(weights)!r} is a Keras file, and Keras has no ResNet-{depth} "
                              f"(keras.applications has ResNet50, ResNet101 and ResNet152): build the ResNet the "
                              f"weights were saved from")
        return "keras" if keras_file else "torchvision"
    if layout not in LAYOUTS:
        raise ConfigError(f"{label}: layout must be one of {LAYOUTS}; received layout={layout!r}")
    if layout == "keras" and depth not in KERAS_RESNET_BLOCKS:
        raise ConfigError(f"{label}: layout='keras' builds keras.applications' ResNet50, ResNet101 or ResNet152; "
                          f"Keras has no ResNet-{depth}: use depth 50, 101 or 152, or layout='torchvision'")
    return layout


def _graph(depth, include_top, num_classes, input_shape, pooling, classifier_activation, width, seed,
           strict) -> Model:
    kind, counts = RESNET_CONFIGS[depth]
    image = Input(input_shape, name="input")
    x = _conv_bn(image, scaled(64, width), 7, 2, "conv1", "bn1")
    x = MaxPool2d(3, 2, padding=1, name="maxpool")(ReLU(name="relu")(x))
    for stage, (planes, blocks) in enumerate(zip(STAGE_PLANES, counts), start=1):
        for index in range(blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            x = _block(kind, x, scaled(planes, width), stride, f"layer{stage}.{index}")
        x = Identity(name=f"layer{stage}")(x)
    if include_top:
        x = Dense(num_classes, name="fc")(GlobalAvgPool2d(name="avgpool")(x))
        if classifier_activation == "softmax":
            x = Softmax(name="prob")(x)
    elif pooling == "avg":
        x = GlobalAvgPool2d(name="avgpool")(x)
    elif pooling == "max":
        x = GlobalMaxPool2d(name="global_maxpool")(x)
    return Model(image, x, name=f"resnet{depth}", seed=seed, strict=strict)


def _conv_bn(x: SymbolicTensor, filters: int, kernel: int, stride: int, conv: str, norm: str) -> SymbolicTensor:
    """A convolution without bias (padding ``kernel // 2``) and its batch norm."""
    y = Conv2d(filters, kernel, stride=stride, padding=kernel // 2, use_bias=False, init="he", name=conv)(x)
    return BatchNorm2d(momentum=BN_MOMENTUM, eps=BN_EPS, name=norm)(y)


def _block(kind: str, x: SymbolicTensor, planes: int, stride: int, name: str) -> SymbolicTensor:
    """One residual block named ``name`` (``layer2.0``): its branch plus the shortcut, then ReLU."""
    out_channels = planes * EXPANSION[kind]
    if kind == "basic":
        y = ReLU(name=f"{name}.relu1")(_conv_bn(x, planes, 3, stride, f"{name}.conv1", f"{name}.bn1"))
        y = _conv_bn(y, planes, 3, 1, f"{name}.conv2", f"{name}.bn2")
    else:   # v1.5: the stride is on the 3x3 convolution
        y = ReLU(name=f"{name}.relu1")(_conv_bn(x, planes, 1, 1, f"{name}.conv1", f"{name}.bn1"))
        y = ReLU(name=f"{name}.relu2")(_conv_bn(y, planes, 3, stride, f"{name}.conv2", f"{name}.bn2"))
        y = _conv_bn(y, out_channels, 1, 1, f"{name}.conv3", f"{name}.bn3")
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, stride, f"{name}.downsample.0", f"{name}.downsample.1")
    return ReLU(name=name)(Add(name=f"{name}.add")([y, shortcut]))


def resnet18(**options) -> Model:
    """ResNet-18: basic blocks 2, 2, 2, 2 (11,689,512 parameters)."""
    return resnet(18, **options)


def resnet34(**options) -> Model:
    """ResNet-34: basic blocks 3, 4, 6, 3 (21,797,672 parameters)."""
    return resnet(34, **options)


def resnet50(**options) -> Model:
    """ResNet-50: bottleneck blocks 3, 4, 6, 3 (25,557,032 parameters; ``layout="keras"``: 25,583,592 and
    53,120 batch-norm statistics, Keras's count of 25,636,712)."""
    return resnet(50, **options)


def resnet101(**options) -> Model:
    """ResNet-101: bottleneck blocks 3, 4, 23, 3 (44,549,160 parameters; Keras's layout 44,707,176 with
    its batch-norm statistics)."""
    return resnet(101, **options)


def resnet152(**options) -> Model:
    """ResNet-152: bottleneck blocks 3, 8, 36, 3 (60,192,808 parameters; Keras's layout 60,419,944 with
    its batch-norm statistics)."""
    return resnet(152, **options)
