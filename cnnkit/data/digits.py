"""The bundled UCI handwritten digits: 1,797 8x8 grey images of the digits 0-9.

Source: UCI ML repository, E. Alpaydin and C. Kaynak (1998), CC BY 4.0; the same data
scikit-learn ships as ``digits.csv.gz`` (see ``DIGITS_LICENSE.txt``). Each pixel counts
the set pixels in a 4x4 block of a 32x32 bitmap, so values are 0..16. The file also
holds a fixed stratified split: 20% of each class is the test set.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from cnnkit.errors import ConfigError
from cnnkit.data.dataset import ArrayDataset

DIGITS_FILE = "digits.npz"
SPLITS = ("train", "test", "all")
MAX_LEVEL = 16


def _load() -> dict[str, np.ndarray]:
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("images", "labels", "is_test")}


def digits(split: str = "train", scale: bool = True) -> ArrayDataset:
    """The digits as an ArrayDataset of (N, 8, 8, 1) float32 images, classes "0".."9".

    Args:
        split: ``"train"`` (1,438 images), ``"test"`` (359) or ``"all"`` (1,797).
        scale: divide by 16 so pixels lie in [0, 1]; otherwise keep the levels 0..16.
    """
    if split not in SPLITS:
        raise ConfigError(f"Invalid value for argument `split`: expected one of {SPLITS}; "
                          f"received split={split!r}.")
    data = _load()
    keep = {"train": ~data["is_test"], "test": data["is_test"],
            "all": np.ones_like(data["is_test"])}[split]
    x = data["images"][keep][..., None].astype(np.float32)
    if scale:
        x /= MAX_LEVEL
    return ArrayDataset(x, data["labels"][keep].astype(np.int64),
                        classes=[str(d) for d in range(10)])
