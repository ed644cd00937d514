"""Read Keras HDF5 weight files (``.h5`` from Keras 2 / tf.keras, ``.weights.h5`` from Keras 3).

Two layouts exist:

* **Keras 2** (``model.save_weights("x.h5")`` and the Keras Applications downloads such as
  ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``): the root attribute ``layer_names`` lists
  the layers in order; each layer group's attribute ``weight_names`` lists its weights in
  order (``block1_conv1/kernel:0``), and each name is a dataset path inside that group.
  Whole-model files (``model.save("x.h5")``) keep the same tree under ``model_weights``.
  Long attributes are split by Keras into ``layer_names0``, ``layer_names1``, ...
* **Keras 3** (``model.save_weights("x.weights.h5")``): groups ``layers/<name>/vars`` holding
  datasets ``0``, ``1``, ... in variable-creation order (kernel then bias). ``<name>`` is the
  snake-cased class name made unique (``conv2d``, ``conv2d_1``), not the layer's own name.

Arrays come back as stored: convolution kernels are HWIO ``(K, K, C, N)``, dense kernels
``(in, out)``. h5py is an optional extra, imported only when a file is read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, WeightsError

__all__ = ["read_keras_h5"]

# Keras 1 era weight names: "<layer>_W_1:0" / "<layer>_b_1:0" mean kernel / bias.
_KERAS1_ALIASES = {"W": "kernel", "b": "bias"}


def read_keras_h5(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the weights of a Keras HDF5 file as ``{"<layer>/<weight>": array}``, in file order.

    Keras 2 files give names like ``block1_conv1/kernel`` and ``block1_conv1/bias`` (the
    ``:0`` suffix dropped; Keras 1 names ``block1_conv1_W_1:0`` become
    ``block1_conv1/kernel``). Keras 3 ``.weights.h5`` files give ``conv2d/0``,
    ``conv2d/1``, ... (their layers are addressed by class, their weights by position).
    Optimizer state is not returned. Weights stored as bfloat16 are widened to float32.

    Raises:
        CnnkitError: h5py is not installed (``pip install cnnkit[h5]``).
        WeightsError: the file is missing, is not HDF5, or has neither Keras layout.
    """
    h5py = _import_h5py()
    source = Path(os.fspath(path))
    if not source.is_file():
        reason = "is a directory" if source.is_dir() else "file not found"
        raise WeightsError(f"cannot read {source}: {reason}")
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise WeightsError(f"{source} is not a readable HDF5 file (truncated or another format?): {exc}") from None
    with handle:
        try:
            return _read_layout(handle, source)
        except WeightsError:
            raise
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise WeightsError(f"{source} is a corrupted Keras weights file: {exc}") from None


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise CnnkitError(
            "reading Keras .h5 weights needs the optional h5py package, which is not "
            "installed; install it with: pip install cnnkit[h5]"
        ) from None
    return h5py


def _read_layout(root: Any, source: Path) -> dict[str, np.ndarray]:
    group = root["model_weights"] if "model_weights" in root and _has_attr(root["model_weights"], "layer_names") else root
    if _has_attr(group, "layer_names"):
        return _read_keras2(group, source)
    if "layers" in root:
        return _read_keras3(root["layers"])
    raise WeightsError(
        f"{source} is HDF5 but not a Keras weights file: it has no 'layer_names' attribute "
        f"(Keras 2) and no 'layers' group (Keras 3); top-level entries: {sorted(root.keys())[:10]}"
    )


def _read_keras2(group: Any, source: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for layer in _string_list_attr(group, "layer_names"):
        if layer not in group:
            raise WeightsError(f"{source}: layer {layer!r} is listed in layer_names but has no group")
        layer_group = group[layer]
        for weight in _string_list_attr(layer_group, "weight_names"):
            key = _keras2_key(layer, weight)
            if key in out:
                raise WeightsError(f"{source}: weight {key!r} appears twice")
            out[key] = _read_dataset(layer_group[weight])
    return out


def _keras2_key(layer: str, weight: str) -> str:
    name = weight.removesuffix(":0")
    if "/" in name:
        return name
    # Keras 1 flat names: "<layer>_<W|b|gamma|...>[_<n>]".
    stem = name.removeprefix(layer + "_")
    stem = re.sub(r"_\d+$", "", stem)
    return f"{layer}/{_KERAS1_ALIASES.get(stem, stem)}"


def _read_keras3(layers: Any) -> dict[str, np.ndarray]:
    found: list[tuple[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == "vars" and hasattr(obj, "shape"):
            found.append((name, obj))

    layers.visititems(visit)
    found.sort(key=lambda item: _natural_key(item[0]))
    out = {}
    for name, dataset in found:
        parts = [p for p in name.split("/") if p not in ("vars", "layers")]
        out["/".join(parts)] = _read_dataset(dataset)
    return out


def _natural_key(name: str) -> list[Any]:
    # "conv2d_10" sorts after "conv2d_2", so file order matches the model's layer order.
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name) if tok]


def _read_dataset(dataset: Any) -> np.ndarray:
    array = np.asarray(dataset[()])
    if _attr_text(dataset.attrs.get("dtype")) == "bfloat16":
        array = (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return array


def _has_attr(group: Any, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _string_list_attr(group: Any, name: str) -> list[str]:
    """Read a list-of-strings attribute, joining Keras's ``name0``, ``name1``... chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [_attr_text(v) for v in values]


def _attr_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)
