"""What the ``cnnkit viz`` commands read: a model from a file or run folder, an image, a test set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..checkpoint import load
from ..classify import load_batch, load_images, preprocessing_of
from ..data import digits
from ..data.sources import load_data
from ..errors import ConfigError, DataError

MODEL_FILE = "model.safetensors"
DIGITS_PREFIX = "digits:"


def load_model(path: str | os.PathLike):
    """A cnnkit model file, or the ``model.safetensors`` of a run folder."""
    target = Path(path)
    if target.is_dir():
        target = target / MODEL_FILE
    if not target.is_file():
        raise DataError(f"no model file at {str(target)!r}; pass a cnnkit model file or a run folder "
                        f"written by `cnnkit train`")
    return load(target)


def load_input(model, spec: str) -> np.ndarray:
    """One input image ``(H, W, C)`` for ``model``: ``digits:N`` (the N-th bundled test digit) or an
    image file prepared as ``cnnkit classify`` prepares photos for this model."""
    if spec.startswith(DIGITS_PREFIX):
        return _digit(model, spec)
    return load_batch(model, [spec])[0]


def _digit(model, spec: str) -> np.ndarray:
    test = digits("test")
    try:
        index = int(spec[len(DIGITS_PREFIX):])
    except ValueError:
        index = -1
    if not 0 <= index < len(test):
        raise ConfigError(f"--image: {spec!r} must be digits:N with N in 0..{len(test) - 1}")
    image, _ = test[index]
    if tuple(model.input_shape) != image.shape:
        raise ConfigError(f"--image: the digits are {image.shape[0]}x{image.shape[1]}x{image.shape[2]} but "
                          f"{model.name} takes {'x'.join(map(str, model.input_shape))}; pass an image file")
    return image


def load_test_data(spec: str, model, seed: int = 0):
    """The test split of ``digits`` or an image folder, prepared as the model's own training data was:
    a ``cnnkit train`` model (preprocessing ``unit``, or ``none`` from before folders were scaled)
    reads the folder as training did; any other (``cnnkit transfer``, pretrained weights) reads it
    as ``cnnkit classify`` reads photos for it."""
    mode = preprocessing_of(model)
    if spec == "digits" or mode not in ("unit", "none"):
        return load_images(spec, model, seed=seed)[1]
    return load_data(spec, image_size=int(model.input_shape[0]), seed=seed, scale=mode == "unit")[1]