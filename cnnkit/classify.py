"""Classify photos with a trained or pretrained model, and extract features at a named layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import imagenet_classes, imagenet_eval_transform, load_image, resize
from .data.sources import load_data
from .errors import ConfigError, WeightsError

IMAGENET_MODES = ("caffe", "torch", "tf")
#: ``none``: the whole photo resized to the input, 0-255; ``unit``: the same scaled to [0, 1] (models
#: trained on an image folder by ``cnnkit train``); ``digits``: grey, resized, inverted (dark ink on light
#: paper) and scaled to 0-1, as the bundled digits.
PLAIN_MODES = ("none", "unit", "digits")
MODES = IMAGENET_MODES + PLAIN_MODES


def load_model(weights: str, arch: str | None = None, batch_norm: bool = False, width: float = 1.0):
    """A model to run: a cnnkit model file alone, or a VGG, ResNet or MobileNetV2 architecture and a
    weights file of any source. ``batch_norm`` chooses a VGG's variant (the others always have batch
    norm); ``width`` is the channel multiplier (MobileNetV2's ``width_mult``). A ResNet or MobileNetV2
    takes the layout of its file: a Keras file builds Keras's (:func:`cnnkit.models.resnet`,
    :func:`cnnkit.models.mobilenet_v2`)."""
    from pathlib import Path

    from .checkpoint import is_cnnkit_file, load
    from .models import MODELS, PRETRAINED_ARCHS
    if not Path(weights).is_file():
        what = "is a folder, not a weights file" if Path(weights).is_dir() else "file not found"
        raise WeightsError(f"--weights {weights}: {what}; check the path")
    if arch is None:
        if batch_norm or width != 1.0:
            raise ConfigError("--batch-norm and --width describe the architecture named by --arch; a cnnkit "
                              "model file carries its own, so give --arch too or drop them")
        if not is_cnnkit_file(weights):
            raise ConfigError(f"--weights {weights} is not a cnnkit model file; name its architecture "
                              f"with --arch (one of {', '.join(PRETRAINED_ARCHS)})")
        return load(weights)
    if arch not in PRETRAINED_ARCHS:
        raise ConfigError(f"--arch must be one of {', '.join(PRETRAINED_ARCHS)}; received {arch!r}")
    options = {"width_mult" if arch == "mobilenet_v2" else "width": width}
    if batch_norm:
        if not arch.startswith("vgg"):
            raise ConfigError(f"--batch-norm chooses the VGG variant with batch norm; {arch} always has batch "
                              f"norm: drop --batch-norm")
        options["batch_norm"] = True
    return MODELS[arch](weights=weights, **options)


def preprocessing_of(model, mode: str | None = None) -> str:
    """The preprocessing mode: the user's choice, else the one saved with the model, else ``caffe``
    for RGB models (the original VGG release) and ``none`` for others."""
    default = "caffe" if model.input_shape[-1] == 3 else "none"
    chosen = mode or model.meta.get("preprocessing") or default
    if chosen not in MODES:
        raise ConfigError(f"preprocessing must be one of {MODES}; received {chosen!r}")
    return chosen


def photo_transform(model, mode: str | None = None):
    """``image -> model input`` for an RGB 0-255 photo, as the model's training data was prepared:
    ImageNet modes resize the shorter side (256 for 224) and centre-crop; the plain modes resize
    the whole photo."""
    height, width, channels = model.input_shape
    chosen = preprocessing_of(model, mode)
    if chosen in PLAIN_MODES:
        return lambda image: _plain(image, (height, width), channels, chosen)
    if height != width:
        raise ConfigError(f"{model.name}: ImageNet preprocessing needs a square input; the model takes "
                          f"{height}x{width}")
    return imagenet_eval_transform(chosen, resize_to=round(height * 256 / 224), crop=height)


def load_images(spec: str, model, seed: int = 0):
    """``(train, test)``: the bundled digits, or a folder (``train/`` and ``test/``, else an 80/20 split)
    read exactly as ``cnnkit classify`` reads photos for ``model`` (its input size and preprocessing)."""
    transform = photo_transform(model) if spec != "digits" else None
    # photo_transform prepares 0-255 photos itself, as classify does: no scaling before it
    return load_data(spec, image_size=None, seed=seed, transform=transform, scale=False)


def load_batch(model, paths: Sequence[str], mode: str | None = None) -> np.ndarray:
    """Read photos and prepare them with :func:`photo_transform`."""
    transform = photo_transform(model, mode)
    return np.stack([transform(load_image(path)) for path in paths]).astype(np.float32)


def _plain(image: np.ndarray, size: tuple[int, int], channels: int, mode: str) -> np.ndarray:
    if channels == 1:   # luma, ITU-R 601, as Pillow's "L" conversion
        image = image @ np.array([[0.299], [0.587], [0.114]], np.float32)
    image = resize(image, size)
    if mode == "digits":
        return (255.0 - image) / 255.0
    return image / 255.0 if mode == "unit" else image


def class_names(model) -> Sequence[str]:
    """The model's class names: its own, or ImageNet's for a 1,000-class model."""
    names = model.meta.get("class_names")
    if names:
        return names
    classes = model.output_shape[-1]
    return imagenet_classes() if classes == 1000 else [str(i) for i in range(classes)]


def probabilities(model, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class probabilities, applying a softmax when the model ends in scores."""
    from .ops.loss import softmax
    from .train import scoring_tensors
    scores = model.predict(x, batch_size)
    return scores if scoring_tensors(model) != model.plan.outputs else softmax(scores)


def classify(model, paths: Sequence[str], top: int = 5, mode: str | None = None, batch_size: int = 8) -> list[dict]:
    """Top-``top`` classes per image: ``[{"image", "predictions": [{"rank", "index", "label", "probability"}]}]``."""
    if top < 1:
        raise ConfigError(f"top must be at least 1; received top={top}")
    names = class_names(model)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        probs = probabilities(model, load_batch(model, chunk, mode), batch_size)
        for path, row in zip(chunk, probs):
            order = np.argsort(-row, kind="stable")[:top]
            results.append({"image": str(path), "predictions": [
                {"rank": rank, "index": int(i), "label": names[i], "probability": float(row[i])}
                for rank, i in enumerate(order, start=1)]})
    return results


def feature_layer(model, layer: str | None = None) -> str:
    """The node to read features at: ``layer`` when given; else ``fc7`` when the model has it (a
    VGG), else the node its last ``Dense`` reads, before any dropout (``avgpool`` of a ResNet or a
    MobileNetV2: the pooled features), else its output."""
    if layer is not None:
        return layer
    names = model.node_names()
    if "fc7" in names:
        return "fc7"
    from .layers import Dense, Dropout
    plan = model.plan
    for step in reversed(plan.steps):
        if isinstance(step.layer, Dense):
            tensor = step.inputs[0]
            # dropout is the identity at inference: its input is the same features, under the name users know
            while tensor in plan.producer and isinstance(plan.steps[plan.producer[tensor]].layer, Dropout):
                tensor = plan.steps[plan.producer[tensor]].inputs[0]
            return names[tensor]
    return names[plan.outputs[0]]


def extract_features(model, paths: Sequence[str], layer: str, mode: str | None = None,
                     batch_size: int = 8) -> np.ndarray:
    """The output of ``layer`` for each image, stacked: ``(N, *layer_output_shape)``."""
    if len(paths) == 0:
        raise ConfigError("extract_features: no images given; pass one or more image paths")
    chunks = [model.features(load_batch(model, paths[start:start + batch_size], mode), layer, batch_size)
              for start in range(0, len(paths), batch_size)]
    return np.concatenate(chunks)
