"""The options every ImageNet architecture function shares (VGG, ResNet, MobileNetV2), checked in one place."""

from __future__ import annotations

from ..errors import ConfigError

POOLINGS = (None, "avg", "max")
CLASSIFIER_ACTIVATIONS = ("softmax", None)


def check_options(label: str, include_top: bool, pooling, classifier_activation, width,
                  width_name: str = "width") -> None:
    """Refuse an impossible combination of the shared options, naming ``label`` (``vgg``, ``resnet50``)
    and the width multiplier by the argument's name ``width_name`` (MobileNet's ``width_mult``)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"{label}: pooling must be one of {POOLINGS}; received pooling={pooling!r}")
    if include_top and pooling is not None:
        raise ConfigError(f"{label}: pooling={pooling!r} applies only with include_top=False")
    if classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ConfigError(f"{label}: classifier_activation must be one of {CLASSIFIER_ACTIVATIONS}; "
                          f"received classifier_activation={classifier_activation!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"{label}: {width_name} must be a positive number; received {width_name}={width!r}")


def check_weights_allocated(label: str, weights, allocate: bool) -> None:
    """Weights can only be loaded into a model whose weights exist."""
    if weights is not None and not allocate:
        raise ConfigError(f"{label}: weights={weights!r} need the weights allocated; received allocate=False "
                          f"(a description only); drop one of them")


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, round(channels * width))
