"""The row-sum helper against NumPy's sum in float64."""

import numpy as np
import pytest

from cnnkit.ops.reduce import sum_rows


@pytest.mark.parametrize("rows, columns", [(1, 3), (7, 5), (64, 1), (131072, 32), (1000, 17), (96, 4)])
def test_sum_rows_equals_the_float64_sum(rows, columns):
    a = np.random.default_rng(rows).standard_normal((rows, columns)).astype(np.float32)
    expected = a.astype(np.float64).sum(axis=0)
    got = sum_rows(a)
    assert got.shape == (columns,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
