"""Where each array of a cnnkit MobileNetV2 in Keras's layout lies in a Keras MobileNetV2 file or a
cnnkit state dict of one.

A cnnkit MobileNetV2 built with ``layout="keras"`` (:mod:`cnnkit.models.keras_mobilenet`) names its
layers as ``keras.applications.MobileNetV2`` does, and Keras stores arrays in cnnkit's layouts
(kernels HWIO, a depthwise kernel ``(3, 3, C, 1)`` as cnnkit's ``DepthwiseConv2d``, dense
``(in, out)``), so only the variable names differ: a convolution's or the dense layer's ``weight``
is Keras's ``kernel``, a depthwise convolution's ``depthwise_kernel``, a batch norm's ``weight``,
``bias``, ``running_mean`` and ``running_var`` are ``gamma``, ``beta``, ``moving_mean`` and
``moving_variance``. Its parameter ``block_3_depthwise.weight`` is the file's
``block_3_depthwise/depthwise_kernel``; a cnnkit state dict has the model's own keys.

Keras 3 files that name no layer (``depthwise_conv2d_3/0``) are named first by
:func:`keras_layer_order`: Keras lists MobileNetV2's layers in the order it creates them.

Keras's ImageNet weights expect ``tf`` preprocessing (pixels scaled to [-1, 1]), not the
``caffe`` of Keras's VGG and ResNet weights: :data:`PREPROCESSING` says so per source.

The mapping is data (file key, file shape, re-layout kind) and touches no array;
:mod:`cnnkit.io.pretrained` checks it and copies.
"""

from __future__ import annotations

from ..errors import WeightsError
from . import keras_resnet_layout
from .keras3 import NORM_VARIABLES
from .torch_layout import ASSIGN

TOP_LAYERS = ("predictions",)
TOP_PREFIXES = ("predictions/", "predictions.")
STEM, STEM_NORM, FIRST_DEPTHWISE = "Conv1", "bn_Conv1", "expanded_conv_depthwise"
#: the preprocessing each source of these weights implies
PREPROCESSING = {"keras": "tf", "cnnkit": None}
#: Conv2D layers of keras.applications.MobileNetV2: the stem, 16 expansions, 17 projections, Conv_1
CONVS = 35
_POINTWISE = ("_expand", "_project")


def is_keras_mobilenet(model) -> bool:
    """Is ``model`` laid out as a Keras MobileNetV2 (its stem and first block's names)?"""
    return {STEM, STEM_NORM, FIRST_DEPTHWISE} <= set(model.layer_names())


def has_top(model) -> bool:
    return "predictions" in model.layer_names()


def detect(state: dict, model) -> str:
    """``keras`` (Keras's variable names, ``Conv1/kernel``) or ``cnnkit`` (``Conv1.weight``)."""
    keys = set(state)
    if any(key.startswith((f"{STEM}/", f"{FIRST_DEPTHWISE}/")) for key in keys):
        return "keras"
    if any(key.startswith((f"{STEM}.", f"{FIRST_DEPTHWISE}.")) for key in keys):
        return "cnnkit"
    sample = sorted(keys)[:5]
    if any(key.startswith("features.1.conv.") for key in keys):
        raise WeightsError(f"these are weights of torchvision's MobileNetV2 (first keys: {sample}); {model.name} "
                           f"is in Keras's layout: build it with layout='torchvision', e.g. "
                           f"cnnkit.models.mobilenet_v2(weights=path, layout='torchvision')")
    if any(key.startswith(("conv1_conv/", "conv1_conv.")) for key in keys):
        raise WeightsError(f"these are weights of Keras's ResNet (first keys: {sample}), not MobileNetV2 weights; "
                           f"build it in Keras's layout, e.g. cnnkit.models.resnet50(weights=path)")
    raise WeightsError(f"cannot tell which Keras MobileNetV2 release these weights come from (first keys: "
                       f"{sample}); expected Keras's names ('Conv1/kernel', 'expanded_conv_depthwise/"
                       f"depthwise_kernel', 'predictions/kernel') or a cnnkit state dict of a Keras-layout "
                       f"MobileNetV2 ('Conv1.weight')")


def kind_of(layer: str) -> str | None:
    """The Keras kind (``conv2d``, ``depthwise_conv2d``, ``batch_normalization``, ``dense``) of a
    Keras MobileNetV2 layer by its name, or None for a layer without weights."""
    if layer == STEM_NORM or layer.endswith(("_BN", "_bn")):
        return "batch_normalization"
    if layer.endswith("_depthwise"):
        return "depthwise_conv2d"
    if layer in (STEM, "Conv_1") or layer.endswith(_POINTWISE):
        return "conv2d"
    if layer in TOP_LAYERS:
        return "dense"
    return None


def canonical_keys(state: dict) -> dict:
    """``state`` with each depthwise kernel under Keras 2's name ``depthwise_kernel``: Keras 3 names that
    variable ``kernel`` (in the legacy ``.h5`` it writes), Keras 2 (its released ImageNet files) and
    the storage order of :mod:`cnnkit.io.keras3` ``depthwise_kernel``. The arrays are not copied."""
    renamed = {}
    for key, array in state.items():
        layer, _, variable = key.rpartition("/")
        if variable == "kernel" and layer.endswith("_depthwise") and f"{layer}/depthwise_kernel" not in state:
            key = f"{layer}/depthwise_kernel"
        renamed[key] = array
    return renamed


def array_copy(layer: str, local: str, shape: tuple[int, ...], source: str) -> tuple[str, tuple[int, ...], str]:
    """The file key, the shape it must have there and the re-layout kind for the model array
    ``layer.local`` of ``shape``: always the same shape, since Keras's layouts are cnnkit's."""
    if source == "cnnkit":
        return f"{layer}.{local}", shape, ASSIGN
    kind = kind_of(layer)
    if kind == "batch_normalization":
        variable = NORM_VARIABLES[local]
    elif local == "weight":
        variable = "depthwise_kernel" if kind == "depthwise_conv2d" else "kernel"
    else:
        variable = local
    return f"{layer}/{variable}", shape, ASSIGN


def keras_layer_order(model) -> dict[str, list[str]]:
    """The Keras names of the model's layers of each Keras kind, in the order Keras numbers them in a
    Keras 3 file (``depthwise_conv2d_3`` is ``order["depthwise_conv2d"][3]``).

    Keras's ``model.layers`` of MobileNetV2 is its creation order, the model's own (a block's
    ``_add`` comes after its projection and reads nothing created later). ``predictions`` is
    listed whether or not the model has it (a file may carry a top that the model leaves out).
    """
    order: dict[str, list[str]] = {"conv2d": [], "depthwise_conv2d": [], "batch_normalization": [],
                                   "dense": list(TOP_LAYERS)}
    for name in model.layer_names():
        kind = kind_of(name)
        if kind is not None and kind != "dense":
            order[kind].append(name)
    return order


def architecture_of(convolutions: int) -> str:
    """The Keras application a file's number of ``Conv2D`` layers suggests."""
    return "mobilenet_v2" if convolutions == CONVS else keras_resnet_layout.architecture_of(convolutions)


def hint(state: dict, model, wrong_shapes: bool, top_missing: bool) -> str:
    """Name the likely cause of a mismatch: another architecture (told by the number of depthwise
    convolutions), another number of classes or width, or a file without ``predictions``."""
    in_file = sum(1 for key in state if key.endswith(("_depthwise/depthwise_kernel", "_depthwise.weight")))
    in_model = sum(1 for name in model.layer_names() if name.endswith("_depthwise"))
    if in_file != in_model:
        return (f"The file holds {in_file} depthwise convolutions, {model.name} in Keras's layout has "
                f"{in_model}: build the architecture the weights were trained as")
    if wrong_shapes:
        classes = keras_resnet_layout.file_classes(state, model)
        if classes is not None:
            return f"The file's predictions has {classes} classes: build the model with num_classes={classes}"
        stem = state.get(f"{STEM}/kernel", state.get(f"{STEM}.weight"))
        ours = model[STEM].filters
        if len(getattr(stem, "shape", ())) == 4 and stem.shape[3] != ours:
            return (f"The file's {STEM} has {stem.shape[3]} filters, the model's {ours}: the weights are of "
                    f"another width_mult (Keras's alpha; its released weights have 0.35, 0.5, 0.75, 1.0, 1.3 "
                    f"or 1.4)")
        return "The layers match but their sizes do not: the weights are of another width_mult (Keras's alpha)"
    if top_missing:
        return ("The file has no predictions layer: build the model with include_top=False or load with "
                "include_top=False")
    return ""

