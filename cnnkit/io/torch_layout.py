"""What every torchvision-layout mapping shares: the re-layout kinds, and telling a torch state
dict from a cnnkit one of the same names.

A cnnkit model that names its layers after torchvision's modules (ResNet, MobileNetV2) finds
each parameter under the file key of the same name; only layouts differ: convolutions OIHW ->
HWIO, the classifier's ``weight`` (out, in) -> (in, out). The mappings are data (file key,
file shape, re-layout kind); :mod:`cnnkit.io.pretrained` checks them and copies.
"""

from __future__ import annotations

#: re-layout kinds of :func:`array_copy`, as :mod:`cnnkit.io.pretrained` names its fills
ASSIGN, FROM_OIHW, FROM_OUT_IN = "assign", "oihw", "out_in"


def source_of(state: dict, model, stem: str) -> str:
    """``torchvision`` or ``cnnkit``: the file's ``<stem>.weight`` (a convolution) in the torch
    layout (out, in, kh, kw) or in cnnkit's (kh, kw, in, out)."""
    weight = state.get(f"{stem}.weight")
    ours = tuple(model[stem].parameters()["weight"].shape)
    if weight is not None and tuple(getattr(weight, "shape", ())) == ours and ours != oihw(ours):
        return "cnnkit"
    return "torchvision"


def array_copy(layer: str, local: str, shape: tuple[int, ...], source: str,
               classifier: str) -> tuple[str, tuple[int, ...], str]:
    """The file key, the shape it must have there and the re-layout kind for the model array
    ``layer.local`` of ``shape``; ``classifier`` names the fully connected layer."""
    key = f"{layer}.{local}"
    if source == "cnnkit":
        return key, shape, ASSIGN
    if len(shape) == 4:
        return key, oihw(shape), FROM_OIHW
    if layer == classifier and local == "weight":
        return key, shape[::-1], FROM_OUT_IN
    return key, shape, ASSIGN


def oihw(hwio: tuple[int, ...]) -> tuple[int, ...]:
    """A cnnkit convolution weight's shape (kh, kw, in, out) as torch's (out, in, kh, kw)."""
    h, w, i, o = hwio
    return o, i, h, w
