"""The 1,000 ImageNet class names, in the output order of torchvision, Keras and Caffe models."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """Class names by index (``imagenet_classes()[207] == "golden retriever"``)."""
    lines = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))
