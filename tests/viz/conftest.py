"""A tiny digits network trained once for all the picture tests (about 5 s)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnkit.checkpoint import load
from cnnkit.models import vgg_small
from cnnkit.run import train_run

EPOCHS = 2


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A `cnnkit train` run folder: 2 epochs of vgg_small on the digits (writes report.html via the hook)."""
    folder = tmp_path_factory.mktemp("viz_run")
    # lr 0.05 (above the default 0.02): two epochs must move the filters visibly from initialisation
    train_run(data="digits", model="vgg_small", epochs=EPOCHS, lr=0.05, out=str(folder), verbose=0)
    return folder


@pytest.fixture(scope="session")
def trained(run_dir):
    return load(run_dir / "model.safetensors")


@pytest.fixture(scope="session")
def untrained():
    """The same network as the run's, at initialisation (same seed, so the same starting weights)."""
    return vgg_small()


def _png_pixels(data) -> np.ndarray:
    """A PNG (bytes or path) as an RGB float array in [0, 1]."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _assert_picture(pixels: np.ndarray, min_size=(150, 150), min_std: float = 0.05) -> None:
    """Big enough, and not blank: the pixels vary and no single colour covers almost everything."""
    height, width, _ = pixels.shape
    assert width >= min_size[0] and height >= min_size[1], (width, height)
    assert pixels.std() > min_std, pixels.std()
    colours, counts = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0, return_counts=True)
    assert counts.max() / counts.sum() < 0.97, "one colour covers the whole picture"
    assert len(colours) > 8


@pytest.fixture(scope="session")
def png_pixels():
    """``png_pixels(bytes_or_path)``: decode a PNG to RGB floats in [0, 1] (and check it is a PNG)."""
    return _png_pixels


@pytest.fixture(scope="session")
def assert_picture():
    """``assert_picture(pixels, min_size=(w, h))``: big enough and not blank."""
    return _assert_picture
