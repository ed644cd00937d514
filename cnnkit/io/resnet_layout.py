"""Where each array of a cnnkit ResNet lies in a ResNet state dict of torchvision, timm or cnnkit.

A cnnkit ResNet names its layers after torchvision's modules (:mod:`cnnkit.models.resnet`), so
its parameter ``layer1.0.conv1.weight`` is the file's key of the same name, and only layouts
differ: convolutions OIHW -> HWIO, ``fc.weight`` (out, in) -> (in, out). timm's ResNets
(``resnet18`` ... ``resnet152`` with the 7x7 stem: its ``a1``, ``tv`` ... releases) use the
same module names, so one layout serves both; its variants with a deep stem (``resnet50d``:
``conv1.0``, ``conv1.1``, ...) or an average-pooled shortcut (``downsample.1`` a convolution,
``downsample.2`` the norm) are other architectures, and the hint says so. A cnnkit state dict
has the same keys in cnnkit's layouts; which of the two a file holds is read from the shape of
``conv1.weight``.

The mapping is data (file key, file shape, re-layout kind) and touches no array;
:mod:`cnnkit.io.pretrained` checks it and copies.
"""

from __future__ import annotations

import re

from ..errors import WeightsError
from . import torch_layout

TOP_LAYERS = ("fc",)
TOP_PREFIXES = ("fc.",)
#: (block kind, blocks per stage) -> the torchvision function that builds it
DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
          ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
          ("bottleneck", (3, 8, 36, 3)): "resnet152"}
_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.conv([1-3])\.weight")


def is_resnet(model) -> bool:
    """Is ``model`` laid out as a torchvision ResNet (its stem and first block's names)?"""
    names = set(model.layer_names())
    return {"conv1", "bn1", "layer1.0.conv1"} <= names


def has_top(model) -> bool:
    return "fc" in model.layer_names()


def detect(state: dict, model) -> str:
    """``torchvision`` (timm's ResNets too) or ``cnnkit``: the file's ``conv1.weight`` in the
    torch layout (out, in, kh, kw) or in cnnkit's (kh, kw, in, out)."""
    keys = set(state)
    if not any(key.startswith(("conv1.", "layer1.")) for key in keys):
        sample = sorted(keys)[:5]
        if any(key.startswith(("conv1_conv/", "conv1_conv.")) for key in keys):
            raise WeightsError(f"these are weights of Keras's ResNet (first keys: {sample}), v1 with convolution "
                               f"biases; {model.name} is in torchvision's layout: build it with layout='keras' "
                               f"(what weights= chooses for a Keras file)")
        raise WeightsError(f"cannot tell which ResNet release these weights come from (first keys: {sample}); "
                           f"expected torchvision or timm names ('conv1.weight', 'layer1.0.conv1.weight', "
                           f"'fc.weight') or a cnnkit ResNet's (the same names)")
    return torch_layout.source_of(state, model, "conv1")


def array_copy(layer: str, local: str, shape: tuple[int, ...], source: str) -> tuple[str, tuple[int, ...], str]:
    """The file key, the shape it must have there and the re-layout kind for the model array
    ``layer.local`` of ``shape`` (:func:`cnnkit.io.torch_layout.array_copy`)."""
    return torch_layout.array_copy(layer, local, shape, source, classifier="fc")


def hint(state: dict, model, wrong_shapes: bool, top_missing: bool) -> str:
    """Name the likely cause of a mismatch: another depth, a timm variant, another width or
    number of classes, or a file without ``fc``."""
    if any(key.startswith("conv1.0.") for key in state):
        return ("The file has a deep stem (conv1.0, conv1.1, ...: timm's resnet*c/d/s variants); cnnkit builds "
                "torchvision's ResNet with the 7x7 stem (timm's plain resnet18 ... resnet152)")
    if any(re.fullmatch(r"layer\d+\.\d+\.downsample\.2\.weight", key) for key in state):
        return ("The file's shortcuts average-pool before their convolution (downsample.1/.2: timm's resnet*d "
                "variants); cnnkit builds torchvision's ResNet (downsample.0 convolution, downsample.1 norm)")
    in_file, in_model = _depth(state), _depth({f"{name}.weight": None for name in model.layer_names()})
    if in_file != in_model:
        return (f"The file holds {_name(in_file)}; the model is {_name(in_model)}: build the architecture "
                f"the weights were trained as")
    if wrong_shapes:
        classes = _file_classes(state, model)
        if classes is not None:
            return f"The file's fc has {classes} classes: build the model with num_classes={classes}"
        return "The layers match but their sizes do not: the weights are of another width"
    if top_missing:
        return "The file has no fc: build the model with include_top=False or load with include_top=False"
    return ""


def _file_classes(state: dict, model) -> int | None:
    """The file's number of classes, when its fc differs from the model's in that alone."""
    fc = state.get("fc.weight")
    if fc is None or "fc" not in model.layer_names() or len(getattr(fc, "shape", ())) != 2:
        return None
    n_in, n_out = model["fc"].parameters()["weight"].shape
    rows, cols = fc.shape
    classes = rows if cols == n_in else cols if rows == n_in else n_out   # torch's (out, in) or cnnkit's (in, out)
    return int(classes) if classes != n_out else None


def _depth(keys) -> tuple[str, tuple[int, ...]]:
    """Block kind and blocks per stage, read from the names of the block convolutions."""
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for key in keys:
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
            bottleneck |= match.group(3) == "3"
    return ("bottleneck" if bottleneck else "basic"), tuple(len(blocks.get(stage, ())) for stage in (1, 2, 3, 4))


def _name(depth: tuple[str, tuple[int, ...]]) -> str:
    kind, counts = depth
    known = DEPTHS.get(depth)
    return f"{known} ({kind} blocks {counts})" if known else f"{kind} blocks {counts}"
