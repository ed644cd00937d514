"""Where each array of a cnnkit ResNet in Keras's layout lies in a Keras ResNet50/101/152 file or a
cnnkit state dict of one.

A cnnkit ResNet built with ``layout="keras"`` (:mod:`cnnkit.models.keras_resnet`) names its layers
as ``keras.applications`` does, and Keras stores arrays in cnnkit's layouts (kernels HWIO, dense
``(in, out)``), so only the variable names differ: a convolution's or the dense layer's
``weight`` is Keras's ``kernel``, a batch norm's ``weight``, ``bias``, ``running_mean`` and
``running_var`` are ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance``. Its parameter
``conv4_block6_2_conv.weight`` is the file's ``conv4_block6_2_conv/kernel``; a cnnkit state dict
has the model's own keys.

Keras 3 files that name no layer (``conv2d_7/0``) are named first by :func:`keras_layer_order`,
the order in which Keras numbers the model's convolutions and batch norms.

The mapping is data (file key, file shape, re-layout kind) and touches no array;
:mod:`cnnkit.io.pretrained` checks it and copies.
"""

from __future__ import annotations

import re

from ..errors import WeightsError
from .keras3 import NORM_VARIABLES
from .torch_layout import ASSIGN

TOP_LAYERS = ("predictions",)
TOP_PREFIXES = ("predictions/", "predictions.")
STEM = "conv1_conv"
#: blocks of the stages conv2 ... conv5 -> the keras.applications function that builds them
DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
#: convolutions of each depth (the stem, three per block, a shortcut per stage) -> its name
CONVS = {1 + 3 * sum(blocks) + 4: name for blocks, name in DEPTHS.items()}
_BLOCK = re.compile(r"(conv[2-5]_block\d+)_1_conv")


def is_keras_resnet(model) -> bool:
    """Is ``model`` laid out as a Keras ResNet (its stem and first block's names)?"""
    return {"conv1_pad", STEM, "conv1_bn", "conv2_block1_1_conv"} <= set(model.layer_names())


def has_top(model) -> bool:
    return "predictions" in model.layer_names()


def detect(state: dict, model) -> str:
    """``keras`` (Keras's variable names, ``conv1_conv/kernel``) or ``cnnkit`` (``conv1_conv.weight``)."""
    keys = set(state)
    if any(key.startswith((f"{STEM}/", "conv2_block1_1_conv/")) for key in keys):
        return "keras"
    if any(key.startswith((f"{STEM}.", "conv2_block1_1_conv.")) for key in keys):
        return "cnnkit"
    sample = sorted(keys)[:5]
    if any(key.startswith(("Conv1/", "Conv1.", "expanded_conv_depthwise/")) for key in keys):
        raise WeightsError(f"these are weights of Keras's MobileNetV2 (first keys: {sample}), not ResNet weights; "
                           f"build it in Keras's layout, e.g. cnnkit.models.mobilenet_v2(weights=path)")
    if "conv1.weight" in keys or "layer1.0.conv1.weight" in keys:
        raise WeightsError(f"these are weights of torchvision's ResNet (first keys: {sample}), v1.5 without "
                           f"convolution biases; {model.name} is in Keras's layout: build it with "
                           f"layout='torchvision', e.g. cnnkit.models.resnet50(weights=path)")
    raise WeightsError(f"cannot tell which Keras ResNet release these weights come from (first keys: {sample}); "
                       f"expected Keras's names ('conv1_conv/kernel', 'conv2_block1_1_bn/gamma', "
                       f"'predictions/kernel') or a cnnkit state dict of a Keras-layout ResNet ('conv1_conv.weight')")


def array_copy(layer: str, local: str, shape: tuple[int, ...], source: str) -> tuple[str, tuple[int, ...], str]:
    """The file key, the shape it must have there and the re-layout kind for the model array
    ``layer.local`` of ``shape``: always the same shape, since Keras's layouts are cnnkit's."""
    if source == "cnnkit":
        return f"{layer}.{local}", shape, ASSIGN
    variable = NORM_VARIABLES[local] if layer.endswith("_bn") else "kernel" if local == "weight" else local
    return f"{layer}/{variable}", shape, ASSIGN


def keras_layer_order(model) -> dict[str, list[str]]:
    """The Keras names of the model's convolutions, batch norms and dense layer, each kind in the
    order Keras numbers them in a Keras 3 file (``conv2d_7`` is ``order["conv2d"][7]``).

    Keras lists a functional model's layers by their depth from the output: in a stage's first
    block the shortcut's convolution ``_0_conv`` is as deep as the branch's last ``_3_conv`` and
    comes before it, after ``_2_conv``; so do their batch norms. Per block the order is
    ``1, 2, 0, 3`` with a shortcut, else ``1, 2, 3``. ``predictions`` is listed whether or not
    the model has it (a file may carry a top that the model leaves out).
    """
    names = model.layer_names()
    present = set(names)
    convs, norms = [STEM], ["conv1_bn"]
    for name in names:
        block = _BLOCK.fullmatch(name)
        if block is None:
            continue
        prefix = block.group(1)
        parts = ("1", "2", "0", "3") if f"{prefix}_0_conv" in present else ("1", "2", "3")
        convs += [f"{prefix}_{part}_conv" for part in parts]
        norms += [f"{prefix}_{part}_bn" for part in parts]
    return {"conv2d": convs, "batch_normalization": norms, "dense": list(TOP_LAYERS)}


def architecture_of(convolutions: int) -> str:
    """The Keras ResNet a file's number of convolutions suggests."""
    return CONVS.get(convolutions, "another architecture")


def hint(state: dict, model, wrong_shapes: bool, top_missing: bool) -> str:
    """Name the likely cause of a mismatch: another depth (told by the number of convolutions, which
    holds whether the file named its layers or the model's structure did), another number of
    classes or width, or a file without ``predictions``."""
    in_file = sum(1 for key in state if key.endswith(("_conv/kernel", "_conv.weight")))
    in_model = sum(1 for name in model.layer_names() if name.endswith("_conv"))
    if in_file != in_model:
        return (f"The file holds {in_file} convolutions ({architecture_of(in_file)}), {model.name} in Keras's "
                f"layout has {in_model}: build the architecture the weights were trained as")
    if wrong_shapes:
        classes = file_classes(state, model)
        if classes is not None:
            return f"The file's predictions has {classes} classes: build the model with num_classes={classes}"
        return "The layers match but their sizes do not: the weights are of another width"
    if top_missing:
        return ("The file has no predictions layer: build the model with include_top=False or load with "
                "include_top=False")
    return ""


def file_classes(state: dict, model) -> int | None:
    """The file's number of classes, when its ``predictions`` differs from the model's in that alone."""
    kernel = state.get("predictions/kernel", state.get("predictions.weight"))
    if kernel is None or "predictions" not in model.layer_names() or len(getattr(kernel, "shape", ())) != 2:
        return None
    n_in, n_out = model["predictions"].parameters()["weight"].shape
    rows, cols = kernel.shape
    return int(cols) if rows == n_in and cols != n_out else None
