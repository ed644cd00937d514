"""Pretrained VGG, ResNet and MobileNetV2 weights as users have them, mapped onto cnnkit's layer names
and layouts.

ResNets (torchvision's layout, timm's ResNets, cnnkit's own) are mapped by
:mod:`cnnkit.io.resnet_layout`, Keras's ResNet50/101/152 (Keras's layout, cnnkit's own) by
:mod:`cnnkit.io.keras_resnet_layout`, MobileNetV2 (torchvision's layout, cnnkit's own) by
:mod:`cnnkit.io.mobilenet_layout`, Keras's MobileNetV2 (Keras's layout, cnnkit's own) by
:mod:`cnnkit.io.keras_mobilenet_layout`: their keys are cnnkit's names (Keras's variables renamed).
VGG sources, recognised by their keys:

- ``torchvision``: ``features.N.weight`` (OIHW), ``classifier.{0,3,6}.weight`` (out, in). ``N`` is
  the layer's position in ``features`` (conv, [batch norm], ReLU, ..., max-pool), which is also
  its position in a cnnkit VGG. fc6's inputs are in PyTorch's channels-first flatten order (c, h, w).
- ``timm``: as torchvision for the features, with fc6/fc7 stored as convolutions
  (``pre_logits.fc1.weight`` (4096, 512, 7, 7), ``pre_logits.fc2.weight`` (4096, 4096, 1, 1)) and
  ``head.fc`` as fc8.
- ``keras``: ``block1_conv1/kernel`` (HWIO) ... ``fc1``, ``fc2``, ``predictions`` (in, out); Keras
  flattens channels-last like cnnkit, so fc6 needs no permutation. Keras 3 files (``.weights.h5``,
  ``.keras``) store layers by class and position (``conv2d_3/0``); they are renamed to these names
  by the names the file records (:mod:`cnnkit.io.keras3`), or else by the model's structure: the
  n-th ``conv2d`` of the file is the n-th convolution of :func:`keras_layer_order` (as for a
  Keras ResNet or MobileNetV2, whose layout gives the order).
- ``cnnkit``: a cnnkit model file or state dict (``conv1_1.weight`` ...), taken as is.

Each source implies its preprocessing: ``torch`` for torchvision and timm, ``caffe`` for Keras
(whose VGG weights are the original Caffe release, and so are its ResNets'), but ``tf`` (pixels
scaled to [-1, 1]) for Keras's MobileNetV2. Bookkeeping keys (``num_batches_tracked``)
are understood and skipped.

Loading plans one copy per model array (which key of the file, which shape it must have, how
its layout turns into cnnkit's), checks the whole plan before touching the model, then copies
each array straight into the model's parameter and drops it, so peak memory is about the
model plus the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from . import keras3, keras_mobilenet_layout, keras_resnet_layout, mobilenet_layout, resnet_layout, torch_layout
from .keras_archive import is_keras_archive, read_keras_archive
from .keras_h5 import read_keras_h5_with_names
from .safetensors_io import read_safetensors, read_safetensors_metadata
from .torch_reader import read_torch

PREPROCESSING = {"torchvision": "torch", "timm": "torch", "keras": "caffe", "cnnkit": None}
TOP = ("fc6", "fc7", "fc8")
TORCHVISION_DENSE = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
TIMM_DENSE = {"fc6": "pre_logits.fc1", "fc7": "pre_logits.fc2", "fc8": "head.fc"}
KERAS_DENSE = {"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"}
KERAS_NORM = keras3.NORM_VARIABLES
# Keys of the file that describe the top (fc6-fc8), skipped when the model has none.
TOP_PREFIXES = {"torchvision": ("classifier.",), "timm": ("pre_logits.", "head."),
                "keras": ("fc1/", "fc2/", "predictions/"), "cnnkit": ("fc6.", "fc7.", "fc8.")}
CONVS_PER_CONFIG = {8: "vgg11", 10: "vgg13", 13: "vgg16 or vgg16c", 16: "vgg19"}


def read_weights(path) -> dict[str, np.ndarray]:
    """Read a weights file by its content: PyTorch (zip or legacy), safetensors, Keras HDF5 (legacy
    ``.h5`` or Keras 3 ``.weights.h5``), a Keras 3 ``.keras`` archive, or NumPy ``.npz``.

    Keras 3 layers come back under Keras's layer names (``block1_conv1/kernel``) when the file
    records them, else under their storage keys (``conv2d_3/0``), which :func:`load_pretrained`
    maps by the model's structure.
    """
    source = Path(os.fspath(path))
    if not source.is_file():
        raise WeightsError(f"{source}: no such weights file; pass the path of a .pth, .h5, .weights.h5, .keras, "
                           ".safetensors or .npz file")
    with source.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x89HDF"):
        state, names = read_keras_h5_with_names(source)
        return keras3.name_layers(state, names, str(source)) if names else state
    if source.suffix == ".keras" or (head.startswith(b"PK") and source.suffix != ".npz" and is_keras_archive(source)):
        return read_keras_archive(source)
    if head.startswith(b"PK") and source.suffix == ".npz":
        try:
            with np.load(source, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError) as error:
            raise WeightsError(f"{source} is not a readable .npz file (truncated?): {error}") from None
    if source.suffix == ".safetensors":
        return read_safetensors(source)
    return read_torch(source)


def detect_source(state: dict[str, np.ndarray], model=None) -> str:
    """Which release a state dict comes from: ``torchvision``, ``timm``, ``keras`` or ``cnnkit``.

    For a ResNet or MobileNetV2 ``model`` (see :func:`graph_layout`): ``torchvision`` (timm's
    ResNets have the same keys and layouts) or ``cnnkit``; without a model, the VGG releases.
    """
    layout = graph_layout(model) if model is not None else None
    if layout is not None:
        return layout.detect(state, model)
    keys = set(state)
    sample = sorted(keys)[:5]
    if any(key.startswith(("pre_logits.", "head.fc.")) for key in keys):
        return "timm"
    if "features.1.conv.0.0.weight" in keys:
        raise WeightsError(f"these are MobileNetV2 weights (first keys: {sample}), not VGG weights; build it "
                           f"with cnnkit.models.mobilenet_v2(weights=path)")
    if any(key.startswith("features.") for key in keys):
        return "torchvision"
    if any(key.startswith("block1_conv1/") for key in keys):
        return "keras"
    if any(key.startswith("conv1_1.") for key in keys):
        return "cnnkit"
    if "layer1.0.conv1.weight" in keys:
        raise WeightsError(f"these are ResNet weights (first keys: {sample}), not VGG weights; build the ResNet "
                           f"they were trained as, e.g. cnnkit.models.resnet50(weights=path)")
    if any(key.startswith(("conv1_conv/", "conv1_conv.")) for key in keys):
        raise WeightsError(f"these are weights of Keras's ResNet (first keys: {sample}), not VGG weights; build "
                           f"it in Keras's layout, e.g. cnnkit.models.resnet50(weights=path)")
    if any(key.startswith(("Conv1/", "Conv1.", "expanded_conv_depthwise/")) for key in keys):
        raise WeightsError(f"these are weights of Keras's MobileNetV2 (first keys: {sample}), not VGG weights; "
                           f"build it in Keras's layout, e.g. cnnkit.models.mobilenet_v2(weights=path)")
    if keras3.is_storage_layout(state):
        raise WeightsError(f"these are Keras 3 weights whose file names no layer (first keys: {sample}); "
                           "load them into a model with load_pretrained(model, path) or the model's "
                           "weights= argument, which maps them by the model's structure")
    raise WeightsError(f"cannot tell which VGG release these weights come from (first keys: {sample}); "
                       f"expected torchvision ('features.0.weight'), timm ('pre_logits.fc1.weight'), "
                       f"Keras ('block1_conv1/kernel') or cnnkit ('conv1_1.weight') names")


def to_cnnkit(state: dict[str, np.ndarray], model, source: str, include_top: bool | None = None
              ) -> dict[str, np.ndarray]:
    """``state`` renamed and re-laid-out into new arrays with ``model``'s names; the model is not touched.

    Raises:
        WeightsError: keys are missing or unexpected, or shapes disagree (all listed at once).
    """
    state = _keyed(state, model, "the weights")
    top = _has_top(model, include_top)
    plan = _plan(model, source, top)
    _check(state, plan, model, source, top)
    targets = model.state_dict()
    converted = {key: np.empty_like(targets[key]) for key in plan}
    _fill(dict(state), plan, converted)
    return converted


def load_pretrained(model, path, include_top: bool | None = None) -> str:
    """Load a VGG, ResNet or MobileNetV2 weights file into ``model``; return the source detected.

    Every key and shape is checked before anything is copied, and all mismatches are reported
    at once. ``include_top=False`` loads only the convolutional part (the file's fc6-fc8, a
    ResNet's fc or a MobileNetV2's classifier are ignored and the model's, if any, keep their values); by default the top is
    loaded when the model has one. Sets ``model.meta["preprocessing"]`` to the mode the weights
    were trained with.
    """
    state = _keyed(read_weights(path), model, str(path))
    preprocessing = None
    cnnkit_file = _is_cnnkit_model_file(path)
    if cnnkit_file:
        state, preprocessing = _cnnkit_model_state(path, state)
    source = "cnnkit" if cnnkit_file else detect_source(state, model)
    top = _has_top(model, include_top)
    plan = _plan(model, source, top)
    try:
        _check(state, plan, model, source, top)
    except WeightsError as error:
        raise WeightsError(f"{path} ({source} layout) does not fit {model.name}: {error}") from None
    with model.writable_state() as targets:   # derived caches (Winograd filters) follow
        _fill(state, plan, targets)
    preprocessing = preprocessing or getattr(graph_layout(model), "PREPROCESSING", PREPROCESSING)[source]
    if preprocessing is not None:
        model.meta["preprocessing"] = preprocessing
    return source


def graph_layout(model):
    """The module that maps the architecture of ``model`` named after its source's modules
    (:mod:`~cnnkit.io.resnet_layout`, :mod:`~cnnkit.io.keras_resnet_layout`,
    :mod:`~cnnkit.io.mobilenet_layout`, :mod:`~cnnkit.io.keras_mobilenet_layout`), or None for a
    VGG, whose keys are mapped here. Each offers ``detect``, ``array_copy``, ``hint``, ``has_top``,
    ``TOP_LAYERS`` and ``TOP_PREFIXES``; a Keras layout also ``keras_layer_order``. Optional: a
    layout whose sources imply other preprocessing than :data:`PREPROCESSING` says so in its own
    ``PREPROCESSING``, and one whose sources spell a key two ways has ``canonical_keys(state)``."""
    if resnet_layout.is_resnet(model):
        return resnet_layout
    if keras_resnet_layout.is_keras_resnet(model):
        return keras_resnet_layout
    if mobilenet_layout.is_mobilenet(model):
        return mobilenet_layout
    if keras_mobilenet_layout.is_keras_mobilenet(model):
        return keras_mobilenet_layout
    return None


def is_keras_file(path) -> bool:
    """Whether ``path`` is a Keras weights file by its content: HDF5 (a legacy ``.h5`` or a Keras 3
    ``.weights.h5``; cnnkit reads HDF5 as Keras's only) or a ``.keras`` archive. A missing or
    unreadable file is not one (loading it says why)."""
    source = Path(os.fspath(path))
    try:
        with source.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(b"\x89HDF") or (head.startswith(b"PK") and source.suffix != ".npz"
                                            and is_keras_archive(source))


def keras_layer_order(model) -> dict[str, list[str]]:
    """The Keras names of the model's layers for each Keras kind, in the order Keras numbers them.

    This is the structure a Keras 3 file that names no layer is mapped by: its ``conv2d_<n>`` is
    ``order["conv2d"][n]``. A graph in a Keras layout gives its own order
    (:func:`cnnkit.io.keras_resnet_layout.keras_layer_order`). For VGG, Keras's order is the
    model's own: convolutions block by block (``block1_conv1`` ...), then ``fc1``, ``fc2``,
    ``predictions``, which are listed whether or not the model has them (a file may carry a top
    that the model leaves out).

    Raises:
        WeightsError: ``model`` is in a layout no Keras model has (torchvision's ResNet or MobileNetV2).
    """
    layout = graph_layout(model)
    if layout is not None:
        if not hasattr(layout, "keras_layer_order"):
            raise WeightsError(f"{model.name} is in torchvision's layout, which no Keras model has; Keras weights "
                               "load into a model in Keras's layout (cnnkit.models.resnet50(weights=path) and "
                               "cnnkit.models.mobilenet_v2(weights=path) build Keras's for a Keras file, as "
                               "layout='keras' does)")
        return layout.keras_layer_order(model)
    order: dict[str, list[str]] = {"conv2d": [], "batch_normalization": [], "dense": list(KERAS_DENSE.values())}
    for name in model.layer_names():
        block = re.fullmatch(r"(conv|bn)\d+_\d+", name)
        if block is not None:
            kind = "conv2d" if block.group(1) == "conv" else "batch_normalization"
            order[kind].append(_keras_key(name, "weight").partition("/")[0])
    return order


def _keyed(state: dict[str, np.ndarray], model, where: str) -> dict[str, np.ndarray]:
    """``state`` under the keys ``model``'s layout maps: named after the model's structure if it is
    Keras 3 weights that name no layer, then each variable a layout's sources spell two ways under
    one key (the layout's ``canonical_keys``, when it has one)."""
    state = _named_by_structure(state, model, where)
    canonical = getattr(graph_layout(model), "canonical_keys", None)
    return canonical(state) if canonical is not None else state


def _named_by_structure(state: dict[str, np.ndarray], model, where: str) -> dict[str, np.ndarray]:
    """Keras 3 weights that name no layer, named after ``model``'s structure; other weights as they are."""
    if not keras3.is_storage_layout(state):
        return state
    try:
        order = keras_layer_order(model)
    except WeightsError as error:
        raise WeightsError(f"{where}: Keras 3 weights that name no layer are mapped by the model's Keras layer "
                           f"order; {error}") from None
    try:
        return keras3.name_by_structure(state, order, where, model.name)
    except WeightsError as error:
        convs = sum(1 for key in state if re.fullmatch(r"conv2d(_\d+)?/0", key))
        # any Keras application may be given to any model: name the file's by its convolutions
        guess = CONVS_PER_CONFIG.get(convs, keras_mobilenet_layout.architecture_of(convs))
        raise WeightsError(f"{error}. The file holds {convs} convolutions ({guess}): build the "
                           "architecture the weights were trained as") from None


def _has_top(model, include_top: bool | None) -> bool:
    if include_top is not None:
        return include_top
    layout = graph_layout(model)
    return layout.has_top(model) if layout is not None else "fc6" in model.layer_names()


def _top_layers(model) -> tuple[str, ...]:
    layout = graph_layout(model)
    return layout.TOP_LAYERS if layout is not None else TOP


def _is_cnnkit_model_file(path) -> bool:
    if Path(path).suffix != ".safetensors":
        return False
    return read_safetensors_metadata(path).get("format", "").startswith("cnnkit")


def _cnnkit_model_state(path, state) -> tuple[dict[str, np.ndarray], str | None]:
    """A cnnkit model file's (or training checkpoint's) weights, and the preprocessing it was saved with."""
    if any(key.startswith("model/") for key in state):
        state = {key[len("model/"):]: value for key, value in state.items() if key.startswith("model/")}
    try:
        meta = json.loads(read_safetensors_metadata(path).get("architecture", "{}")).get("meta", {})
    except (json.JSONDecodeError, AttributeError):
        meta = {}
    return state, meta.get("preprocessing") if isinstance(meta, dict) else None


# ----------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Copy:
    """How one model array is filled: from which key of the file, of which shape, by which re-layout."""

    key: str
    shape: tuple[int, ...]
    fill: Callable[[np.ndarray, np.ndarray], None]  # fill(target, source) writes into target


def _plan(model, source: str, include_top: bool) -> dict[str, _Copy]:
    layout, top = graph_layout(model), _top_layers(model)
    plan = {}
    for name, target in model.state_dict().items():
        layer, _, local = name.rpartition(".")   # layer names may hold dots (layer1.0.conv1)
        if layer in top and not include_top:
            continue
        if layout is not None:
            key, shape, kind = layout.array_copy(layer, local, target.shape, source)
            plan[name] = _Copy(key, shape, RELAYOUTS[kind])
        else:
            plan[name] = _copy_for(model, source, layer, local, target.shape)
    return plan


def _copy_for(model, source: str, layer: str, local: str, shape: tuple[int, ...]) -> _Copy:
    if source == "cnnkit":
        return _Copy(f"{layer}.{local}", shape, _assign)
    if source == "keras":
        return _Copy(_keras_key(layer, local), shape, _assign)
    if layer in TOP:
        return _torch_dense(model, source, layer, local, shape)
    key = f"features.{model.index(layer)}.{local}"
    if len(shape) == 4:  # HWIO <- OIHW
        h, w, i, o = shape
        return _Copy(key, (o, i, h, w), _from_oihw)
    return _Copy(key, shape, _assign)


def _keras_key(layer: str, local: str) -> str:
    if layer in KERAS_DENSE:
        return f"{KERAS_DENSE[layer]}/{'kernel' if local == 'weight' else local}"
    block = re.fullmatch(r"(conv|bn)(\d+)_(\d+)", layer)
    if block is None:
        return f"{layer}/{local}"
    if block.group(1) == "conv":
        return f"block{block.group(2)}_conv{block.group(3)}/{'kernel' if local == 'weight' else local}"
    return f"block{block.group(2)}_bn{block.group(3)}/{KERAS_NORM.get(local, local)}"


def _torch_dense(model, source: str, layer: str, local: str, shape: tuple[int, ...]) -> _Copy:
    """fc6-fc8 from torchvision's Linear (out, in) or timm's convolutions (out, C, H, W) / (out, in, 1, 1)."""
    prefix = (TIMM_DENSE if source == "timm" else TORCHVISION_DENSE)[layer]
    key = f"{prefix}.{local}"
    if local != "weight":
        return _Copy(key, shape, _assign)
    n_in, n_out = shape
    volume = model[model.index(layer) - 1].input_shape if layer == "fc6" else None
    if layer == "fc6" and volume is not None and len(volume) == 3:
        h, w, c = volume
        if source == "timm":
            return _Copy(key, (n_out, c, h, w), _from_conv_dense(h, w, c))
        return _Copy(key, (n_out, n_in), _from_channels_first(h, w, c))
    if source == "timm" and layer == "fc7":
        return _Copy(key, (n_out, n_in, 1, 1), _from_pointwise)
    return _Copy(key, (n_out, n_in), _from_out_in)


def _assign(target: np.ndarray, source: np.ndarray) -> None:
    target[...] = source


def _from_oihw(target: np.ndarray, source: np.ndarray) -> None:
    target[...] = source.transpose(2, 3, 1, 0)


def _from_out_in(target: np.ndarray, source: np.ndarray) -> None:
    target[...] = source.T


RELAYOUTS = {torch_layout.ASSIGN: _assign, torch_layout.FROM_OIHW: _from_oihw,
             torch_layout.FROM_OUT_IN: _from_out_in}


def _from_pointwise(target: np.ndarray, source: np.ndarray) -> None:
    target[...] = source.reshape(source.shape[:2]).T


def _from_channels_first(h: int, w: int, c: int):
    """fc6 of a (c, h, w) flatten: write each input row to its (h, w, c) position, with no temporary copy."""
    def fill(target: np.ndarray, source: np.ndarray) -> None:
        _rows_view(target, h, w, c)[...] = source.reshape(-1, c, h, w).transpose(2, 3, 1, 0)
    return fill


def _from_conv_dense(h: int, w: int, c: int):
    """fc6 stored as an (out, c, h, w) convolution over the whole pool5 volume."""
    def fill(target: np.ndarray, source: np.ndarray) -> None:
        _rows_view(target, h, w, c)[...] = source.transpose(2, 3, 1, 0)
    return fill


def _rows_view(target: np.ndarray, h: int, w: int, c: int) -> np.ndarray:
    view = target.reshape(h, w, c, -1)
    assert np.shares_memory(view, target), "fc6 weight must be contiguous to be filled in place"
    return view


# ----------------------------------------------------------------- checking and copying


def _check(state, plan: dict[str, _Copy], model, source: str, include_top: bool) -> None:
    """Raise one WeightsError listing every missing key, unexpected key and wrong shape."""
    wanted = {copy.key for copy in plan.values()}
    missing = [_named(copy.key, name) for name, copy in plan.items() if copy.key not in state]
    wrong = [f"{_named(copy.key, name)}: file {tuple(np.shape(state[copy.key]))}, model needs {copy.shape}"
             for name, copy in plan.items()
             if copy.key in state and tuple(np.shape(state[copy.key])) != copy.shape]
    layout = graph_layout(model)
    unexpected = [key for key in state if key not in wanted and not _ignorable(key, source, include_top, layout)]
    problems = [f"{len(found)} {what}: {', '.join(found)}"
                for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if found]
    if problems:
        top_missing = any(name.rpartition(".")[0] in _top_layers(model) for name in plan
                          if plan[name].key not in state)
        hint = (layout.hint(state, model, bool(wrong), top_missing) if layout is not None
                else _hint(state, model, source, bool(wrong), top_missing))
        raise WeightsError("; ".join(problems) + (f". {hint}" if hint else ""))


def _named(key: str, name: str) -> str:
    """A file key, with the model's name for it when that differs."""
    return key if key == name else f"{key} ({name})"


def _ignorable(key: str, source: str, include_top: bool, layout=None) -> bool:
    if key.endswith("num_batches_tracked"):
        return True
    prefixes = layout.TOP_PREFIXES if layout is not None else TOP_PREFIXES[source]
    return not include_top and key.startswith(prefixes)


def _hint(state, model, source: str, wrong_shapes: bool, top_missing: bool) -> str:
    """Name the likely cause: another VGG configuration, batch norm on one side only, another width, no top."""
    patterns = {"keras": r"block\d+_conv\d+/kernel", "cnnkit": r"conv\d+_\d+\.weight"}
    pattern = patterns.get(source, r"features\.\d+\.weight")
    in_file = sum(1 for key, value in state.items() if re.fullmatch(pattern, key) and np.ndim(value) == 4)
    in_model = sum(1 for name in model.layer_names() if re.fullmatch(r"conv\d+_\d+", name))
    if in_file != in_model:
        guess = CONVS_PER_CONFIG.get(in_file, "another architecture")
        return (f"The file holds {in_file} convolutions ({guess}), {model.name} has {in_model}: "
                f"build the architecture the weights were trained as")
    file_norm = any(key.endswith(("running_mean", "moving_mean")) for key in state)
    model_norm = any(re.fullmatch(r"bn\d+_\d+", name) for name in model.layer_names())
    if file_norm != model_norm:
        return f"The file {'has' if file_norm else 'has no'} batch norm: build the model with batch_norm={file_norm}"
    if wrong_shapes:
        return ("The layers match but their sizes do not: the weights are of another width, number of classes "
                "or input size (fc6 sees the pool5 volume)")
    if top_missing:
        return "The file has no fc6-fc8: build the model with include_top=False or load with include_top=False"
    return ""


def _fill(state: dict, plan: dict[str, _Copy], targets: dict[str, np.ndarray]) -> None:
    """Copy each planned array into its target, dropping the file's array as soon as it is copied."""
    for name, copy in plan.items():
        copy.fill(targets[name], state.pop(copy.key))
