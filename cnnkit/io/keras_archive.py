"""Read a Keras 3 ``.keras`` archive (``model.save("x.keras")``) without Keras and without running it.

The archive is a zip of ``metadata.json`` (the Keras version), ``config.json`` (the model's
architecture, which Keras would deserialize into objects) and ``model.weights.h5`` (the weights in
the Keras 3 HDF5 layout), and ``assets/`` for layers that keep files. cnnkit reads exactly those
three members by name and nothing else: no path from the archive is used to write anything, so a
member named ``../x`` is never extracted anywhere. ``config.json`` is parsed as plain data to name
the layers; no class, function or module it mentions is imported.

Each member's declared sizes are checked against the file before it is inflated, and the JSON
members have a hard cap. The weights are copied, with their size checked as they stream, into a
private temporary folder (mode 0700, removed afterwards), where the hardened HDF5 reader
(:mod:`cnnkit.io.keras_h5`) reads them as it reads any ``.weights.h5``: it needs a file, which it
maps to look for corrupted heaps before libhdf5 sees it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, WeightsError
from cnnkit.io import keras3
from cnnkit.io.keras_h5 import read_keras_h5_with_names

__all__ = ["is_keras_archive", "read_keras_archive"]

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = {CONFIG: 16 << 20, METADATA: 1 << 20}   # VGG16's config.json is 20 KB
MAX_MEMBERS = 100_000
MAX_INFLATE_RATIO = 100   # as the torch reader: only crafted entries come near it
_INFLATE_SLACK = 1 << 20
_CHUNK = 1 << 20


def is_keras_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a zip file is a Keras archive: named ``.keras``, or holding ``config.json`` and
    ``model.weights.h5`` at its top. An unreadable zip is not one (its reader will say why)."""
    source = Path(os.fspath(path))
    if source.suffix == ".keras":
        return True
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
    except Exception:  # noqa: BLE001 - a sniff: whatever breaks it, the torch reader reports the file
        return False
    return CONFIG in names and WEIGHTS in names


def read_keras_archive(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The weights of a ``.keras`` archive under Keras's layer names (``block1_conv1/kernel``).

    Layers are named by the ``name`` their weights record (recent Keras 3) and by
    ``config.json`` (the n-th ``Conv2D`` of its layer list is weight path ``conv2d_<n>``), which
    must agree; the configuration also tells which variables a layer has (``use_bias``...).
    A model whose configuration lists no layers (a subclassed model) keeps the weights' storage
    keys (``conv2d/0``) where they record no name. Optimizer state is not returned.

    Raises:
        WeightsError: the file is not a readable zip, lacks a member, a member is larger than
            the file can justify, config.json is not a Keras model configuration, or the
            weights are not a Keras 3 HDF5 file (all as :func:`cnnkit.io.read_keras_h5`).
        CnnkitError: h5py is not installed (``pip install cnnkit[h5]``).
    """
    source = Path(os.fspath(path))
    if not source.is_file():
        raise WeightsError(f"cannot read {source}: {'is a directory' if source.is_dir() else 'file not found'}")
    try:
        with zipfile.ZipFile(source) as archive:
            members = _members(archive, source)
            config = _read_json(archive, members[CONFIG], source)
            if METADATA in members:
                _read_json(archive, members[METADATA], source)  # checked, not needed
            state, names = _read_weights(archive, members[WEIGHTS], source)
    except CnnkitError:
        raise
    except MemoryError:
        raise WeightsError(f"{source}: not enough memory to read it") from None
    except OSError as error:
        raise WeightsError(f"cannot read {source}: {error}") from None
    except Exception as error:  # any failure of zipfile on untrusted bytes is a bad file
        raise WeightsError(f"{source} is not a readable .keras archive (truncated or corrupted?): "
                           f"{type(error).__name__}: {error}") from None
    configured, options = keras3.paths_from_config(config, f"{source}:{CONFIG}")
    differ = [f"{path} ({names[path]!r} in the weights, {configured[path]!r} in config.json)"
              for path in sorted(set(names) & set(configured)) if names[path] != configured[path]]
    if differ:
        raise WeightsError(f"{source}: the weights and config.json name layers differently: "
                           f"{', '.join(differ[:5])}; the archive was altered: save the model again with Keras")
    return keras3.name_layers(state, {**configured, **names}, f"{source}:{WEIGHTS}", options)


def _members(archive: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's three members, each checked; the rest are left unread."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise WeightsError(f"{source}: the archive lists {len(infos):,} members, more than the "
                           f"{MAX_MEMBERS:,} cnnkit reads a .keras file with; it is not one Keras writes")
    found: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in (CONFIG, METADATA, WEIGHTS):
            if info.filename in found:
                raise WeightsError(f"{source}: the archive holds {info.filename} twice; which one Keras "
                                   "would read is not defined: save the model again with Keras")
            _check_entry(info, source)
            found[info.filename] = info
    for needed in (CONFIG, WEIGHTS):
        if needed not in found:
            other = sorted(name for name in archive.namelist() if name.startswith("model.weights"))
            hint = (f" (it holds {other[:3]}: weights saved as npz or in shards, which cnnkit does not "
                    "read; save with model.save('x.keras') and no shard size)") if other else ""
            raise WeightsError(f"{source} is a zip archive but not a Keras 3 .keras file: it has no "
                               f"{needed}{hint}; its first members are {archive.namelist()[:5]}")
    return found


def _check_entry(info: zipfile.ZipInfo, source: Path) -> None:
    """Refuse a member whose sizes the file cannot justify, before anything is inflated."""
    size = os.path.getsize(source)
    if info.flag_bits & 0x1:
        raise WeightsError(f"{source}: member {info.filename} is encrypted; Keras writes none")
    if info.header_offset + info.compress_size > size:
        raise WeightsError(f"{source} is truncated or corrupted: member {info.filename} claims "
                           f"{info.compress_size} bytes at offset {info.header_offset}, past the end of the "
                           f"{size}-byte file")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise WeightsError(f"{source} is corrupted: stored member {info.filename} declares "
                               f"{info.file_size} bytes but occupies {info.compress_size}")
    elif info.compress_type != zipfile.ZIP_DEFLATED:
        raise WeightsError(f"{source}: member {info.filename} uses compression method {info.compress_type}; "
                           "cnnkit reads stored or DEFLATE members (Keras stores them): save the model "
                           "again with Keras")
    elif info.file_size > MAX_INFLATE_RATIO * info.compress_size + _INFLATE_SLACK:
        raise WeightsError(f"{source}: member {info.filename} would inflate {info.compress_size} bytes to "
                           f"{info.file_size}, more than the {MAX_INFLATE_RATIO}:1 cnnkit accepts (a zip bomb?)")
    limit = MAX_JSON_BYTES.get(info.filename)
    if limit is not None and info.file_size > limit:
        raise WeightsError(f"{source}: {info.filename} declares {info.file_size:,} bytes, more than the "
                           f"{limit:,} cnnkit reads of it; it is not one Keras writes")


def _read_json(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: Path) -> Any:
    with archive.open(info) as member:
        data = member.read(info.file_size + 1)  # zipfile stops at the declared size, checks the CRC
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise WeightsError(f"{source}: {info.filename} is not JSON text ({type(error).__name__}: "
                           f"{str(error)[:200]}); save the model again with Keras") from None


def _read_weights(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: Path
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The weights member, copied into a private folder and read there by the HDF5 reader."""
    with tempfile.TemporaryDirectory(prefix="cnnkit-keras-") as folder:   # mode 0700
        weights_file = Path(folder) / WEIGHTS   # a name of our own: none from the archive
        _extract(archive, info, weights_file, source)
        try:
            return read_keras_h5_with_names(weights_file)
        except WeightsError as error:   # name the archive, not the temporary copy
            raise WeightsError(str(error).replace(str(weights_file), f"{source}:{WEIGHTS}")) from None


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, source: Path) -> None:
    """Copy one member to ``target``, never more than its checked declared size."""
    with archive.open(info) as member, open(target, "xb") as out:
        copied = 0
        while chunk := member.read(_CHUNK):
            copied += len(chunk)
            if copied > info.file_size:  # zipfile itself stops at file_size; this is the backstop
                raise WeightsError(f"{source}: member {info.filename} inflates past its declared "
                                   f"{info.file_size} bytes; the archive is corrupted")
            out.write(chunk)
