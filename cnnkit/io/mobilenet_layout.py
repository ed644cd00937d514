"""Where each array of a cnnkit MobileNetV2 lies in a MobileNetV2 state dict of torchvision or cnnkit.

A cnnkit MobileNetV2 names its layers after torchvision's modules (:mod:`cnnkit.models.mobilenet`),
so its parameter ``features.1.conv.0.0.weight`` is the file's key of the same name, and only
layouts differ: convolutions OIHW -> HWIO (a depthwise ``(C, 1, 3, 3)`` becomes the
``(3, 3, 1, C)`` of ``Conv2d(C, 3, groups=C)``), ``classifier.1.weight`` (out, in) -> (in, out).
A cnnkit state dict has the same keys in cnnkit's layouts; which of the two a file holds is read
from the shape of ``features.0.0.weight``.

The mapping is data (file key, file shape, re-layout kind) and touches no array;
:mod:`cnnkit.io.pretrained` checks it and copies. The re-layout kinds are those of
:mod:`cnnkit.io.resnet_layout`.
"""

from __future__ import annotations

import re

from ..errors import WeightsError
from . import torch_layout

TOP_LAYERS = ("classifier.1",)
TOP_PREFIXES = ("classifier.",)
STEM, CLASSIFIER = "features.0.0", "classifier.1"
_BLOCK_KEY = re.compile(r"features\.(\d+)\.")


def is_mobilenet(model) -> bool:
    """Is ``model`` laid out as a torchvision MobileNetV2 (its stem and first block's names)?"""
    names = set(model.layer_names())
    return {STEM, "features.0.1", "features.1.conv.0.0"} <= names


def has_top(model) -> bool:
    return CLASSIFIER in model.layer_names()


def detect(state: dict, model) -> str:
    """``torchvision`` or ``cnnkit``: the file's ``features.0.0.weight`` in the torch layout
    (out, in, kh, kw) or in cnnkit's (kh, kw, in, out)."""
    keys = set(state)
    if not any(key.startswith("features.1.conv.") for key in keys):
        sample = sorted(keys)[:5]
        if "layer1.0.conv1.weight" in keys:
            raise WeightsError(f"these are ResNet weights (first keys: {sample}), not MobileNetV2 weights; build "
                               f"the ResNet they were trained as, e.g. cnnkit.models.resnet50(weights=path)")
        if any(key.startswith(("Conv1/", "expanded_conv_depthwise/")) for key in keys):
            raise WeightsError(f"these are weights of Keras's MobileNetV2 (first keys: {sample}); {model.name} is "
                               f"in torchvision's layout: build it with layout='keras', e.g. "
                               f"cnnkit.models.mobilenet_v2(weights=path)")
        if "features.0.weight" in keys:
            raise WeightsError(f"these are VGG weights (first keys: {sample}), not MobileNetV2 weights; build the "
                               f"VGG they were trained as, e.g. cnnkit.models.vgg16(weights=path)")
        raise WeightsError(f"cannot tell which MobileNetV2 release these weights come from (first keys: {sample}); "
                           f"expected torchvision names ('features.0.0.weight', 'features.1.conv.0.0.weight', "
                           f"'classifier.1.weight') or a cnnkit MobileNetV2's (the same names)")
    return torch_layout.source_of(state, model, STEM)


def array_copy(layer: str, local: str, shape: tuple[int, ...], source: str) -> tuple[str, tuple[int, ...], str]:
    """The file key, the shape it must have there and the re-layout kind for the model array
    ``layer.local`` of ``shape`` (:func:`cnnkit.io.torch_layout.array_copy`)."""
    return torch_layout.array_copy(layer, local, shape, source, classifier=CLASSIFIER)


def hint(state: dict, model, wrong_shapes: bool, top_missing: bool) -> str:
    """Name the likely cause of a mismatch: other blocks, another number of classes or width, or a
    file without ``classifier.1``."""
    in_file = _blocks(state)
    in_model = _blocks(f"{name}.weight" for name in model.layer_names())
    if in_file != in_model:
        return (f"The file's features run from features.0 to features.{max(in_file, default=0)}, the model's to "
                f"features.{max(in_model)}: the weights are of another inverted residual setting than "
                f"torchvision's MobileNetV2")
    if wrong_shapes:
        classes = _file_classes(state, model)
        if classes is not None:
            return f"The file's classifier.1 has {classes} classes: build the model with num_classes={classes}"
        stem = _filters(state.get(f"{STEM}.weight"))
        ours = model[STEM].filters
        if stem is not None and stem != ours:
            return (f"The file's {STEM} has {stem} filters, the model's {ours}: the weights are of another "
                    f"width_mult (torchvision's released weights are width_mult=1.0, 32 filters)")
        return "The layers match but their sizes do not: the weights are of another width_mult"
    if top_missing:
        return ("The file has no classifier.1: build the model with include_top=False or load with "
                "include_top=False")
    return ""


def _filters(stem) -> int | None:
    """The output channels of a stem weight in either layout (torch's (out, 3, 3, 3), cnnkit's (3, 3, 3, out))."""
    shape = tuple(getattr(stem, "shape", ()))
    if len(shape) != 4:
        return None
    return int(shape[0] if shape[1:] == (3, 3, 3) else shape[3])


def _file_classes(state: dict, model) -> int | None:
    """The file's number of classes, when its classifier differs from the model's in that alone."""
    weight = state.get(f"{CLASSIFIER}.weight")
    if weight is None or CLASSIFIER not in model.layer_names() or len(getattr(weight, "shape", ())) != 2:
        return None
    n_in, n_out = model[CLASSIFIER].parameters()["weight"].shape
    rows, cols = weight.shape
    classes = rows if cols == n_in else cols if rows == n_in else n_out   # torch's (out, in) or cnnkit's (in, out)
    return int(classes) if classes != n_out else None


def _blocks(keys) -> set[int]:
    """The indices N of the ``features.N`` that hold weights."""
    return {int(match.group(1)) for match in map(_BLOCK_KEY.match, keys) if match}
