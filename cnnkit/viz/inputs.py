"""What the ``cnnkit viz`` commands read: a model from a file or run folder, an image, a test set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

MODEL_FILE = "model.safetensors"
DIGITS_PREFIX = "digits:"


def load_model(path: str | os.PathLike):
    """A cnnkit model file, or the ``model.safetensors`` of a run folder."""
    from ..checkpoint import load
    target = Path(path)
    if target.is_dir():
        target = target / MODEL_FILE
    if not target.is_file():
        raise DataError(f"no model file at {str(target)!r}; pass a cnnkit model file or a run folder "
                        f"written by `cnnkit train`")
    return load(target)


def load_input(model, spec: str) -> np.ndarray:
    """One input image ``(H, W, C)`` for ``model``: ``digits:N`` (the N-th bundled test digit) or an image file.

    A file is prepared the way the model's inputs were: with the model's ImageNet preprocessing
    when it has one; otherwise resized to the input, and for a one-channel model turned grey and
    scaled to [0, 1] like the digits; a three-channel model gets 0-255 RGB like an image folder.
    """
    if spec.startswith(DIGITS_PREFIX):
        return _digit(model, spec)
    if model.meta.get("preprocessing"):
        from ..classify import load_batch
        return load_batch(model, [spec])[0]
    from ..data import load_image
    height, width, channels = model.input_shape
    image = load_image(spec, size=(height, width))
    if channels == 1:
        return image.mean(axis=-1, keepdims=True) / 255.0
    if channels != 3:
        raise ConfigError(f"--image: {model.name} takes {channels}-channel input; only 1- or 3-channel models "
                          f"can be fed an image file")
    return image


def _digit(model, spec: str) -> np.ndarray:
    from ..data import digits
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
    """The test split of ``digits`` or an image folder, at the model's input size."""
    from ..run import load_data
    return load_data(spec, image_size=int(model.input_shape[0]), seed=seed)[1]
