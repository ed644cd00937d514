"""Read Keras HDF5 weight files (``.h5`` from Keras 2 / tf.keras, ``.weights.h5`` from Keras 3).

Two layouts exist:

* **Keras 2** (``model.save_weights("x.h5")`` and the Keras Applications downloads such as
  ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``): the root attribute ``layer_names`` lists
  the layers in order; each layer group's attribute ``weight_names`` lists its weights in
  order (``block1_conv1/kernel:0``), and each name is a dataset path inside that group.
  Whole-model files (``model.save("x.h5")``) keep the same tree under ``model_weights``.
  Long attributes are split by Keras into ``layer_names0``, ``layer_names1``, ...
* **Keras 3** (``model.save_weights("x.weights.h5")``, and ``model.weights.h5`` inside a
  ``.keras`` archive): groups ``layers/<path>/vars`` holding datasets ``0``, ``1``, ... in
  variable-creation order (kernel then bias). ``<path>`` is the snake-cased class name made
  unique in the order of ``model.layers`` (``conv2d``, ``conv2d_1``, ... ``conv2d_10``), not the
  layer's own name; recent Keras 3 releases also write the own name as the ``name`` attribute
  of each ``vars`` group (:func:`read_keras_h5_with_names` returns it; ``cnnkit.io.keras3``
  turns the paths into Keras's layer names).

Arrays come back as stored: convolution kernels are HWIO ``(K, K, C, N)``, dense kernels
``(in, out)``. h5py is an optional extra, imported only when a file is read.

HDF5 can point outside the file: external links, external raw storage and virtual
datasets read other files on the disk. The reader follows hard links only, and reads a
dataset only when its bytes are in this file and its size is justified by them.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, WeightsError

__all__ = ["read_keras_h5", "read_keras_h5_with_names"]

# Keras 1 era weight names: "<layer>_W_1:0" / "<layer>_b_1:0" mean kernel / bias.
_KERAS1_ALIASES = {"W": "kernel", "b": "bias"}
# A dataset may read as at most this many times the bytes it occupies in the file (plus a
# MiB): Keras stores weights uncompressed, so only filters or fill values go beyond.
MAX_INFLATE_RATIO = 100
_SLACK_BYTES = 1 << 20
MAX_OUTPUT_RATIO = 8  # all datasets together, as for read_torch
MAX_DEPTH = 32
MAX_ATTRIBUTE_STRINGS = 100_000  # layer and weight names of one attribute
MAX_NAME_LENGTH = 1024  # a Keras 3 layer's own name (the ``name`` attribute of its ``vars``)
_NUMERIC_KINDS = "biufc"
# An HDF5 global heap collection (where variable-length strings live): "GCOL", version 1,
# 3 reserved bytes, its size; then objects of index, references, 4 reserved bytes, size.
_COLLECTION = struct.Struct("<4sB3sQ")
_HEAP_OBJECT = struct.Struct("<HH4xQ")


def read_keras_h5(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the weights of a Keras HDF5 file as ``{"<layer>/<weight>": array}``, in file order.

    Keras 2 files give names like ``block1_conv1/kernel`` and ``block1_conv1/bias`` (the
    ``:0`` suffix dropped; Keras 1 names ``block1_conv1_W_1:0`` become
    ``block1_conv1/kernel``). Keras 3 ``.weights.h5`` files give ``conv2d/0``,
    ``conv2d/1``, ... (their layers are addressed by class, their weights by position), in
    the order of ``model.layers`` for each class (``conv2d_10`` after ``conv2d_9``).
    Optimizer state is not returned. Weights stored as bfloat16 are widened to float32.

    Raises:
        CnnkitError: h5py is not installed (``pip install cnnkit[h5]``).
        WeightsError: the file is missing, is not HDF5, or has neither Keras layout.
    """
    return read_keras_h5_with_names(path)[0]


def read_keras_h5_with_names(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`read_keras_h5`, and the own name of each Keras 3 layer that the file records.

    The names map a layer path of the weights' keys to the layer's name in the model:
    ``{"conv2d": "block1_conv1", "conv2d_1": "block1_conv2", ...}``. Keras 2 files name their
    layers in the keys already, and Keras 3 releases before the ``name`` attribute record none:
    both give ``{}``.
    """
    h5py = _import_h5py()
    source = Path(os.fspath(path))
    if not source.is_file():
        reason = "is a directory" if source.is_dir() else "file not found"
        raise WeightsError(f"cannot read {source}: {reason}")
    _check_global_heaps(source)
    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise WeightsError(f"{source} is not a readable HDF5 file (truncated or another format?): {exc}") from None
    with handle:
        try:
            return _read_layout(_Tree(handle, source, h5py), source)
        except WeightsError:
            raise
        except MemoryError:
            raise WeightsError(f"{source}: not enough memory to read its weights") from None
        except Exception as exc:  # any failure of libhdf5 on untrusted bytes is a bad file
            raise WeightsError(
                f"{source} is a corrupted Keras weights file: {type(exc).__name__}: {exc}"
            ) from None


class _Tree:
    """Access to an HDF5 file that stays inside it: hard links only, local storage only."""

    def __init__(self, handle: Any, source: Path, h5py: Any):
        self.root, self.source, self.h5py = handle, source, h5py
        # Each dataset may use the slack; together they stay within a multiple of the file.
        self.budget = MAX_OUTPUT_RATIO * os.path.getsize(source) + (64 << 20)

    def child(self, group: Any, path: str) -> Any | None:
        """``group[path]`` following hard links only; None when a component is missing."""
        node = group
        for part in (p for p in path.split("/") if p):
            if not isinstance(node, self.h5py.Group):
                return None
            link = node.get(part, getlink=True)
            if link is None:
                return None
            if not isinstance(link, self.h5py.HardLink):
                self._refuse_link(node, part, link)
            node = node[part]
        return node

    def _refuse_link(self, group: Any, name: str, link: Any) -> None:
        where = f"{group.name.rstrip('/')}/{name}"
        if isinstance(link, self.h5py.ExternalLink):
            target = f"an external link to {link.filename}:{link.path}"
        elif isinstance(link, self.h5py.SoftLink):
            target = f"a soft link to {link.path}"
        else:
            target = f"a {type(link).__name__}"
        raise WeightsError(
            f"{self.source}: {where} is {target}; cnnkit follows no links in weight files "
            "(they can read other files), so save the weights again with Keras"
        )

    def hard_children(self, group: Any) -> list[tuple[str, Any]]:
        """The members of ``group``, refusing any that is not a hard link."""
        return [(name, self.child(group, name)) for name in group]

    def read_all(self, datasets: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check every dataset, then read them: nothing is allocated before all pass."""
        for dataset in datasets.values():
            self.check(dataset)
        return {key: self._read_dataset(dataset) for key, dataset in datasets.items()}

    def _read_dataset(self, dataset: Any) -> np.ndarray:
        array = np.asarray(dataset[()])
        if not array.dtype.isnative:  # HDF5 stores either byte order; the model's arrays are native
            array = array.astype(array.dtype.newbyteorder("="))
        if "dtype" in dataset.attrs and self.strings(dataset, "dtype") == ["bfloat16"]:
            array = (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return array

    def strings(self, obj: Any, name: str) -> list[str]:
        """The strings of ``obj``'s attribute ``name``, read only when the file declares a
        string type of reasonable size: libhdf5 crashes reading some corrupted
        variable-length sequences, so no other type is handed to it."""
        attribute = obj.attrs.get_id(name)
        count = int(np.prod(attribute.shape, dtype=np.int64)) if attribute.shape else 1
        if count == 0:  # Keras 3's legacy .h5 writes a layer without weights as an empty float array
            return []
        if attribute.get_type().get_class() != self.h5py.h5t.STRING or count > MAX_ATTRIBUTE_STRINGS:
            raise WeightsError(
                f"{self.source}: attribute {name!r} of {obj.name} is not a list of at most "
                f"{MAX_ATTRIBUTE_STRINGS:,} strings (type {attribute.dtype}, {count:,} entries), as Keras "
                "writes it: the file is corrupted or crafted; save the weights again with Keras"
            )
        return [_attr_text(value) for value in np.atleast_1d(obj.attrs[name])]

    def check(self, dataset: Any) -> None:
        """Refuse a dataset whose bytes are not in this file or do not justify its size."""
        where = f"{self.source}: dataset {dataset.name}"
        if dataset.is_virtual:
            raise WeightsError(f"{where} is a virtual dataset (it reads other files); cnnkit refuses it, "
                               "save the weights again with Keras")
        if dataset.external:
            raise WeightsError(f"{where} keeps its bytes in external file(s) "
                               f"{[entry[0] for entry in dataset.external]}; cnnkit reads only "
                               "weights stored in the file itself")
        if dataset.dtype.kind not in _NUMERIC_KINDS or dataset.dtype.subdtype is not None:
            raise WeightsError(f"{where} has dtype {dataset.dtype}, not a number type a weight can have")
        stored = dataset.id.get_storage_size()
        if dataset.nbytes > MAX_INFLATE_RATIO * stored + _SLACK_BYTES:
            raise WeightsError(
                f"{where} declares shape {dataset.shape} ({dataset.nbytes} bytes) but occupies "
                f"{stored} bytes of the file; cnnkit accepts at most {MAX_INFLATE_RATIO}:1 "
                "(a fill-value or compression bomb?)"
            )
        self.budget -= dataset.nbytes
        if self.budget < 0:
            raise WeightsError(
                f"{where}: with it the datasets exceed {MAX_OUTPUT_RATIO} times the file's "
                "size (plus 64 MiB), which cnnkit accepts; the file declares more than it holds"
            )


def _check_global_heaps(source: Path) -> None:
    """Refuse a file whose global heap would send libhdf5 into an endless loop.

    libhdf5 (1.14) walks a heap collection object by object, stepping by each object's
    size; a free-space object of size 0 never steps, and reading a variable-length string
    (Keras 2 layer names) then spins forever in C, where no signal can stop it. The fuzz
    found this with one flipped byte. Walk each collection the same way first.
    """
    with open(source, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = data.find(b"GCOL")
            while start != -1:
                _check_collection(data, start, source)
                start = data.find(b"GCOL", start + 4)


def _check_collection(data: mmap.mmap, start: int, source: Path) -> None:
    if start + _COLLECTION.size > len(data):
        return
    _, version, reserved, size = _COLLECTION.unpack_from(data, start)
    if version != 1 or reserved != bytes(3) or not 4096 <= size <= len(data) - start:
        return  # not a collection header (libhdf5 rejects it by itself if it is used as one)
    end, at = start + size, start + _COLLECTION.size
    while end - at >= _HEAP_OBJECT.size:
        index, _, object_size = _HEAP_OBJECT.unpack_from(data, at)
        step = object_size if index == 0 else _HEAP_OBJECT.size + -(-object_size // 8) * 8
        if step == 0 or step > end - at:
            raise WeightsError(
                f"{source} is corrupted: the HDF5 global heap at byte {start} has an object of "
                f"{object_size} bytes at byte {at}, which libhdf5 cannot walk past; save the "
                "weights again with Keras"
            )
        at += step


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise CnnkitError(
            "reading Keras .h5 weights needs the optional h5py package, which is not "
            "installed; install it with: pip install cnnkit[h5]"
        ) from None
    return h5py


def _read_layout(tree: _Tree, source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    root = tree.root
    nested = tree.child(root, "model_weights")
    group = nested if nested is not None and _has_attr(nested, "layer_names") else root
    if _has_attr(group, "layer_names"):
        return _read_keras2(tree, group, source), {}
    layers = tree.child(root, "layers")
    if layers is not None:
        return _read_keras3(tree, layers, source)
    raise WeightsError(
        f"{source} is HDF5 but not a Keras weights file: it has no 'layer_names' attribute "
        f"(Keras 2) and no 'layers' group (Keras 3); top-level entries: {sorted(root.keys())[:10]}"
    )


def _read_keras2(tree: _Tree, group: Any, source: Path) -> dict[str, np.ndarray]:
    out: dict[str, Any] = {}
    for layer in _string_list_attr(tree, group, "layer_names"):
        layer_group = tree.child(group, layer)
        if not isinstance(layer_group, tree.h5py.Group):
            raise WeightsError(f"{source}: layer {layer!r} is listed in layer_names but has no group")
        for weight in _string_list_attr(tree, layer_group, "weight_names"):
            key = _keras2_key(layer, weight)
            if key in out:
                raise WeightsError(f"{source}: weight {key!r} appears twice")
            dataset = tree.child(layer_group, weight)
            if not isinstance(dataset, tree.h5py.Dataset):
                raise WeightsError(f"{source} is a corrupted Keras weights file: weight {weight!r} "
                                   f"of layer {layer!r} is listed in weight_names but has no dataset")
            out[key] = dataset
    return tree.read_all(out)


def _keras2_key(layer: str, weight: str) -> str:
    name = weight.removesuffix(":0")
    if "/" in name:
        return name
    # Keras 1 flat names: "<layer>_<W|b|gamma|...>[_<n>]".
    stem = name.removeprefix(layer + "_")
    stem = re.sub(r"_\d+$", "", stem)
    return f"{layer}/{_KERAS1_ALIASES.get(stem, stem)}"


def _read_keras3(tree: _Tree, layers: Any, source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    found: list[tuple[str, Any]] = []
    names: dict[str, str] = {}
    seen: set[Any] = set()

    def visit(group: Any, prefix: str, depth: int) -> None:
        # A walk of our own rather than visititems: every link is checked, each group is
        # entered once (hard links can make cycles), and the depth is capped.
        if depth > MAX_DEPTH or group.id in seen:
            raise WeightsError(f"{source}: group {group.name} nests deeper than {MAX_DEPTH} levels "
                               "or is reached twice; save the weights again with Keras")
        seen.add(group.id)
        for name, obj in tree.hard_children(group):
            path = f"{prefix}{name}"
            if isinstance(obj, tree.h5py.Group):
                if name == "vars" and "name" in obj.attrs:
                    names[_layer_path(path)] = _own_name(tree, obj)
                visit(obj, path + "/", depth + 1)
            elif name and prefix.endswith("vars/") and isinstance(obj, tree.h5py.Dataset):
                found.append((path, obj))

    visit(layers, "", 0)
    found.sort(key=lambda item: _natural_key(item[0]))
    out: dict[str, Any] = {}
    for name, dataset in found:
        key = _layer_path(name)
        if key in out:  # only a crafted file has groups named "layers" or "vars" that collide
            raise WeightsError(f"{source}: two datasets read as weight {key!r}; save the weights again with Keras")
        out[key] = dataset
    return tree.read_all(out), names


def _layer_path(name: str) -> str:
    """``conv2d_3/vars/0`` -> ``conv2d_3/0``; ``functional/layers/conv2d/vars`` -> ``functional/conv2d``."""
    return "/".join(p for p in name.split("/") if p not in ("vars", "layers"))


def _own_name(tree: _Tree, group: Any) -> str:
    """The ``name`` attribute of a ``vars`` group: one string, as Keras writes a layer's name."""
    values = tree.strings(group, "name")
    name = values[0] if len(values) == 1 else None
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or "/" in name:
        shown = repr(name)[:80] if len(values) == 1 else f"{len(values)} strings"
        raise WeightsError(
            f"{tree.source}: the name of layer group {group.name} is {shown}, not one layer name of "
            f"1 to {MAX_NAME_LENGTH} characters without '/' as Keras writes it; the file is corrupted "
            "or crafted: save the weights again with Keras"
        )
    return name


def _natural_key(name: str) -> list[Any]:
    # "conv2d_10" sorts after "conv2d_2", so file order matches the model's layer order.
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name) if tok]


def _has_attr(group: Any, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _string_list_attr(tree: _Tree, group: Any, name: str) -> list[str]:
    """Read a list-of-strings attribute, joining Keras's ``name0``, ``name1``... chunks."""
    if name in group.attrs:
        return tree.strings(group, name)
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(tree.strings(group, f"{name}{chunk}"))
        chunk += 1
    return values


def _attr_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)
