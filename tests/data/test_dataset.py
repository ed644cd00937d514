"""ArrayDataset validation, subsets, splits and whole-array access."""

import numpy as np
import pytest

from cnnkit.data import ArrayDataset, Dataset, Subset, labels_of, split, subset, to_arrays
from cnnkit.errors import ConfigError, DataError


def _data(n=20, classes=4):
    x = np.arange(n * 2 * 3 * 1, dtype=np.uint8).reshape(n, 2, 3, 1)
    y = np.arange(n) % classes
    return x, y


class ListDataset:
    """A minimal Dataset that is not an ArrayDataset and has no `labels`."""

    def __init__(self, x, y):
        self.x, self.y, self.classes = x, y, ["a", "b", "c", "d"]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i].astype(np.float32), int(self.y[i])


def test_items_are_float32_images_and_int_labels():
    x, y = _data()
    ds = ArrayDataset(x, y)
    img, label = ds[5]
    assert img.dtype == np.float32 and img.shape == (2, 3, 1)
    np.testing.assert_array_equal(img, x[5])
    assert label == 1 and isinstance(label, int)
    assert len(ds) == 20 and ds.classes == ["0", "1", "2", "3"]
    assert ds.x.dtype == np.uint8  # storage keeps its compact dtype
    assert isinstance(ds, Dataset)
    with pytest.raises(IndexError):
        ds[20]


def test_shape_errors_name_argument_and_shapes():
    x, y = _data()
    with pytest.raises(DataError, match=r"`x` must have shape \(N, H, W, C\).*\(20, 2, 3\).*x\[\.\.\., None\]"):
        ArrayDataset(x[..., 0], y)
    with pytest.raises(DataError, match=r"`y` must be a 1-D array.*\(20,\).*y.shape=\(19,\)"):
        ArrayDataset(x, y[:19])
    with pytest.raises(DataError, match=r"argmax"):
        ArrayDataset(x, np.eye(4)[y].astype(np.float32)[:, 0] + 0.5)
    with pytest.raises(DataError, match=r"label 3 has no name in `classes` \(3 names\)"):
        ArrayDataset(x, y, classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels must be >= 0"):
        ArrayDataset(x, y - 1)


def test_transform_is_applied_on_getitem_and_arrays():
    x, y = _data()
    ds = ArrayDataset(x, y, transform=lambda img: img * 2)
    np.testing.assert_array_equal(ds[3][0], x[3] * 2.0)
    xs, ys = ds.arrays()
    np.testing.assert_array_equal(xs, x.astype(np.float32) * 2)
    np.testing.assert_array_equal(ys, y)


def test_subset_with_indices_and_mask():
    x, y = _data()
    ds = ArrayDataset(x, y, classes="abcd")
    sub = subset(ds, [4, 0, -1])
    assert isinstance(sub, ArrayDataset) and sub.classes == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(sub.y, y[[4, 0, 19]])
    mask = y == 2
    np.testing.assert_array_equal(subset(ds, mask).x, x[mask])
    with pytest.raises(DataError, match=r"index 20 is out of range for a data set of 20"):
        subset(ds, [1, 20])
    with pytest.raises(DataError, match=r"boolean mask needs shape \(20,\)"):
        subset(ds, mask[:5])


def test_subset_of_generic_dataset_is_a_view():
    x, y = _data()
    ds = ListDataset(x, y)
    sub = subset(ds, [7, 2])
    assert isinstance(sub, Subset) and len(sub) == 2
    np.testing.assert_array_equal(sub[0][0], x[7])
    np.testing.assert_array_equal(sub.labels, y[[7, 2]])
    np.testing.assert_array_equal(labels_of(ds), y)


@pytest.mark.parametrize("make", [ArrayDataset, ListDataset])
def test_split_is_stratified_disjoint_and_reproducible(make):
    x = np.zeros((100, 1, 1, 1), np.float32)
    y = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    rest, held = split(make(x, y), fraction=0.2, seed=7)
    np.testing.assert_array_equal(np.bincount(labels_of(held)), [8, 6, 4, 2])
    assert len(rest) + len(held) == 100
    rest2, held2 = split(make(x, y), fraction=0.2, seed=7)
    np.testing.assert_array_equal(labels_of(held), labels_of(held2))


def test_split_partitions_the_examples():
    n = 50
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    ds = ArrayDataset(x, np.arange(n) % 3)
    rest, held = split(ds, 0.3, seed=1, stratify=False)
    ids = np.concatenate([rest.x.ravel(), held.x.ravel()])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    assert len(held) == 15
    with pytest.raises(ConfigError, match=r"fraction=1.5"):
        split(ds, 1.5)


def test_to_arrays_stacks_any_dataset():
    x, y = _data()
    xs, ys = to_arrays(Subset(ListDataset(x, y), np.arange(20)))
    assert xs.dtype == np.float32 and ys.dtype == np.int64
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_to_arrays_reports_mismatched_shapes():
    class Ragged(ListDataset):
        def __getitem__(self, i):
            return np.zeros((2 + i, 2, 1), np.float32), 0

    with pytest.raises(DataError, match=r"example 1 has shape \(3, 2, 1\) but example 0 has \(2, 2, 1\)"):
        to_arrays(Ragged(*_data(3)))
