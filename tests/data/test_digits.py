"""The bundled UCI digits and their fixed split."""

import numpy as np
import pytest

from cnnkit.data import digits
from cnnkit.errors import ConfigError

UCI_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_all_digits_match_the_original_data():
    ds = digits("all", scale=False)
    assert len(ds) == 1797 and ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
    assert ds.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(np.bincount(ds.y), UCI_COUNTS)
    assert ds.x.min() == 0 and ds.x.max() == 16 and np.all(ds.x == np.round(ds.x))
    # First row of scikit-learn's digits.csv.gz: a zero.
    np.testing.assert_array_equal(ds.x[0, 0, :, 0], [0, 0, 5, 13, 9, 1, 0, 0])
    assert ds.y[0] == 0


def test_scale_divides_by_16():
    raw, scaled = digits("all", scale=False), digits("all")
    np.testing.assert_allclose(scaled.x, raw.x / 16)
    assert scaled.x.max() == 1.0


def _rows(ds):
    """Each example as (pixel bytes, label); the 1,797 UCI images are all distinct."""
    return {(r.tobytes(), int(l)) for r, l in zip(ds.x.reshape(len(ds), -1), ds.y)}


def test_split_is_stratified_disjoint_and_complete():
    train, test, every = digits("train"), digits("test"), digits("all")
    assert len(train) == 1438 and len(test) == 359
    assert len(_rows(every)) == 1797
    assert not _rows(train) & _rows(test)
    assert _rows(train) | _rows(test) == _rows(every)
    np.testing.assert_array_equal(np.bincount(test.y), [round(0.2 * c) for c in UCI_COUNTS])


def test_split_is_stable():
    a, b = digits("test", scale=False), digits("test", scale=False)
    np.testing.assert_array_equal(a.x, b.x)
    # Pinned when the split was drawn: a regenerated or reordered file changes these.
    assert int(a.x.sum()) == 111787
    assert a.y[:10].tolist() == [2, 5, 2, 4, 9, 8, 4, 7, 1, 0]


def test_bad_split_is_a_config_error():
    with pytest.raises(ConfigError, match=r"split='val'"):
        digits("val")
