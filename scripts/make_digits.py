"""Rebuild cnnkit/data/digits.npz from the UCI digits (the copy scikit-learn ships as digits.csv.gz).

Run once by hand, not part of the package:
    pip download --no-deps -d /tmp/sk scikit-learn && unzip -o /tmp/sk/*.whl '*/digits.csv.gz' -d /tmp/sk
    python scripts/make_digits.py /tmp/sk/sklearn/datasets/data/digits.csv.gz cnnkit/data/digits.npz
The test split is a fixed, stratified 20% drawn once with seed 1797.
"""

import gzip
import sys

import numpy as np


def main(csv_gz: str, out: str) -> None:
    with gzip.open(csv_gz, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    images = table[:, :64].reshape(-1, 8, 8).astype(np.uint8)
    labels = table[:, 64].astype(np.uint8)
    rng = np.random.default_rng(1797)
    is_test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        is_test[rng.choice(members, size=int(round(0.2 * len(members))), replace=False)] = True
    np.savez_compressed(out, images=images, labels=labels, is_test=is_test)
    print(images.shape, np.bincount(labels), int(is_test.sum()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
