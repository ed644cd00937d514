"""A data set named as on the command line: ``digits`` (the bundled set) or a folder of class
sub-folders, as a ``(train, test)`` pair. Folder images are scaled to [0, 1] (as torchvision's
``ToTensor``, and as the bundled digits are) unless asked not to.

What ``cnnkit train`` trains on, ``cnnkit transfer`` reads and ``cnnkit viz`` tests with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnkit.data.dataset import Dataset, split
from cnnkit.data.digits import digits
from cnnkit.data.images import ImageFolder
from cnnkit.data.transforms import apply_transform
from cnnkit.errors import DataError

#: the share of a folder's images (per class) held out for the test
TEST_FRACTION = 0.2


def scale_to_unit(image: np.ndarray, rng=None) -> np.ndarray:
    """0-255 pixels to [0, 1] (the ``unit`` preprocessing)."""
    return image / np.float32(255.0)


def load_data(spec: str, image_size: int | None = 64, seed: int = 0, transform=None,
              scale: bool = True) -> tuple[Dataset, Dataset]:
    """``"digits"`` (the bundled set), or an image folder: ``PATH/train`` and ``PATH/test`` when present,
    otherwise ``PATH/<class>/*`` split 80/20 per class. Folder images are resized to ``image_size``
    (``None``: kept), scaled from 0-255 to [0, 1] unless ``scale=False``, and then passed through
    ``transform``."""
    if spec == "digits":
        return digits("train"), digits("test")
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"--data must be 'digits' or a folder of class sub-folders; {spec!r} is neither")
    steps = [t for t in (scale_to_unit if scale else None, transform) if t is not None]
    pipeline = None if not steps else steps[0] if len(steps) == 1 else _chain(steps)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _two_classes(ImageFolder(root / "train", size=image_size, transform=pipeline), root / "train")
        return train, ImageFolder(root / "test", size=image_size, transform=pipeline)
    train, test = split(_two_classes(ImageFolder(root, size=image_size, transform=pipeline), root),
                        fraction=TEST_FRACTION, seed=seed)
    check_not_empty(test, root, "test", TEST_FRACTION, "or give PATH/train and PATH/test folders")
    return train, test


def _chain(steps):
    def chained(image, rng=None):
        for step in steps:
            image = apply_transform(step, image, rng)
        return image
    return chained


def _two_classes(folder: ImageFolder, root: Path) -> ImageFolder:
    if len(folder.classes) < 2:
        raise DataError(f"--data {str(root)!r} has one class folder ({folder.classes[0]!r}); a classifier "
                        f"needs at least two: add a sub-folder of images for each other class")
    return folder


def check_not_empty(part: Dataset, root, name: str, fraction: float, hint: str) -> None:
    """Refuse an empty split ``name`` of the data at ``root`` (``fraction`` of each class), with ``hint``."""
    if len(part) == 0:
        raise DataError(f"--data {str(root)!r}: the {name} split ({fraction:.0%} of each class) is empty, "
                        f"the classes are too small; add images to each class {hint}")
