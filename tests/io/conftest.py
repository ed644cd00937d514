"""Fixtures for the weight-file tests: small VGG16-shaped torch state dicts and writers."""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

# VGG16 (configuration D) with every width divided by 8; "M" is a max-pool slot.
_VGG16_SMALL = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]


def vgg16_small_state_dict(seed: int = 0) -> OrderedDict:
    """The key names and indices of torchvision's vgg16, with small widths."""
    gen = torch.Generator().manual_seed(seed)
    sd: OrderedDict = OrderedDict()
    index, channels = 0, 3
    for item in _VGG16_SMALL:
        if item == "M":
            index += 1
            continue
        sd[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=gen)
        sd[f"features.{index}.bias"] = torch.randn(item, generator=gen)
        index, channels = index + 2, item  # conv, then ReLU
    for idx, (n_in, n_out) in zip((0, 3, 6), ((64, 32), (32, 32), (32, 10))):
        sd[f"classifier.{idx}.weight"] = torch.randn(n_out, n_in, generator=gen)
        sd[f"classifier.{idx}.bias"] = torch.randn(n_out, generator=gen)
    return sd


def _save_torch(obj, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _legacy_header() -> bytes:
    """The three leading pickles of a legacy torch file: magic, protocol, system info."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, sys_info))


def _storage_record(data: bytes, itemsize: int) -> bytes:
    """One legacy storage: little-endian int64 element count, then the raw bytes."""
    return struct.pack("<q", len(data) // itemsize) + data


@pytest.fixture
def vgg_sd() -> OrderedDict:
    return vgg16_small_state_dict()


@pytest.fixture(params=["zip", "legacy"])
def fmt(request) -> str:
    return request.param


@pytest.fixture
def save_torch():
    """``save_torch(obj, path, fmt)``: torch.save in the "zip" or the "legacy" format."""
    return _save_torch


@pytest.fixture
def legacy_header() -> bytes:
    """The three leading pickles of a legacy torch file: magic, protocol, system info."""
    return _legacy_header()


@pytest.fixture
def storage_record():
    """``storage_record(data, itemsize)``: one legacy storage, count header then bytes."""
    return _storage_record
