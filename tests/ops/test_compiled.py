"""The compiled (Numba) fast paths and the worker pool against the NumPy reference paths."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cnnkit.arithmetic import windows_2d
from cnnkit.errors import ConfigError
from cnnkit.ops import gemm_kernels, products, runtime, threads, tuning, winograd_fast
from cnnkit.ops.gemm import gemm_conv2d, gemm_conv2d_backward
from cnnkit.ops.gemm_fast import compiled_gemm_conv2d, compiled_gemm_conv2d_backward
from cnnkit.ops.pool import max_pool2d, max_pool2d_backward
from cnnkit.ops.winograd import filter_gradient, transform_filter, winograd_conv2d, winograd_conv2d_backward
from cnnkit.ops.winograd_fast import compiled_winograd_conv2d, compiled_winograd_conv2d_backward


def _relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(params=[1, 2])
def workers(request, monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", str(request.param))
    return request.param


@pytest.mark.parametrize("share", ["by block", "by position"])
@pytest.mark.parametrize("block_elements", [1 << 8, 1 << 18])  # bands of tile rows in waves / whole images
@pytest.mark.parametrize("batch, h, w, c, n, padding", [
    (3, 13, 11, 5, 4, 1), (1, 22, 9, 3, 6, (2, 0)), (2, 8, 8, 4, 4, 0), (2, 17, 17, 2, 3, "same")])
def test_winograd_fast_path_equals_the_numpy_path(batch, h, w, c, n, padding, block_elements, share, workers,
                                                  monkeypatch):
    monkeypatch.setattr(tuning, "WINOGRAD_BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(tuning, "POSITION_BLOCK_TILES", block_elements // 64)
    monkeypatch.setattr(tuning, "WINOGRAD_MIN_BLOCK_TILES", 1)
    monkeypatch.setattr(tuning, "MAX_SHARED_FILTER_BYTES", 1 << 30 if share == "by block" else 0)
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((batch, h, w, c)), rng.standard_normal((3, 3, c, n))
    bias = rng.standard_normal(n)
    windows = windows_2d((h, w), 3, 1, padding, 1, "conv")
    u = transform_filter(weight, 4)
    reference = winograd_conv2d(x, weight, bias, windows, 4, u)
    assert _relative(compiled_winograd_conv2d(x, u, bias, windows), reference) < 1e-12
    dy = rng.standard_normal(reference.shape)
    for need_input_grad, need_weight_grad in [(True, True), (False, True), (True, False)]:
        dx, du, dbias = compiled_winograd_conv2d_backward(dy, x, u, windows, need_input_grad, need_weight_grad)
        got = dx, filter_gradient(du, 4, weight), dbias
        expected = winograd_conv2d_backward(dy, x, weight, windows, 4, need_input_grad, need_weight_grad, u)
        for ours, theirs in zip(got, expected):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                assert _relative(ours, theirs) < 1e-12


def test_winograd_fast_path_cuts_a_large_image_into_bands_of_tile_rows(monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    monkeypatch.setattr(tuning, "WINOGRAD_BLOCK_ELEMENTS", 36 * 4 * 8)
    monkeypatch.setattr(tuning, "WINOGRAD_MIN_BLOCK_TILES", 1)
    windows = windows_2d((40, 40), 3, 1, 1, 1, "conv")
    plan = winograd_fast._Plan((1, 40, 40, 4), windows, 4)
    assert not plan.by_position
    assert len(plan.blocks) == 10 and all(block.band_rows == 1 for block in plan.blocks)
    assert [len(wave) for wave in plan.waves()] == [5, 5]


def test_wide_layers_share_each_block_by_position(monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    windows = windows_2d((28, 28), 3, 1, 1, 1, "conv")
    wide = winograd_fast._Plan((8, 28, 28, 256), windows, 512)   # U: 36 x 256 x 512 floats, 18.9 MB
    assert wide.by_position and max(block.tiles for block in wide.blocks) <= tuning.POSITION_BLOCK_TILES
    assert not winograd_fast._Plan((128, 32, 32, 32), windows_2d((32, 32), 3, 1, 1, 1, "conv"), 32).by_position


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, c, n, kernel, stride, padding, dilation", [
    (8, 3, 4, 3, 1, 1, 1), (9, 4, 5, 3, 2, 1, 1), (10, 3, 2, 5, 2, 2, 2), (7, 2, 3, 2, 1, 0, 1),
    (11, 5, 3, (3, 2), (2, 1), (1, 0), 1), (6, 3, 3, 3, 3, 0, 1), (7, 8, 3, 3, 1, 1, 1)])
def test_compiled_gemm_path_equals_the_numpy_path(size, c, n, kernel, stride, padding, dilation, dtype, workers):
    rng = np.random.default_rng(1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((3, size, size + 1, c)).astype(dtype)
    weight = rng.standard_normal((kh, kw, c, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    windows = windows_2d((size, size + 1), kernel, stride, padding, dilation, "conv")
    limit = 1e-12 if dtype == np.float64 else 1e-5
    expected = gemm_conv2d(x, weight, bias, windows)
    got = compiled_gemm_conv2d(x, weight, bias, windows)
    assert got.dtype == dtype and _relative(got, expected) < limit
    dy = rng.standard_normal(expected.shape).astype(dtype)
    for ours, theirs in zip(compiled_gemm_conv2d_backward(dy, x, weight, windows),
                            gemm_conv2d_backward(dy, x, weight, windows)):
        assert ours.dtype == dtype and _relative(ours, theirs) < limit


@pytest.mark.parametrize("kh, kw, c", [(3, 3, 3), (5, 5, 1), (2, 3, 4)])
def test_im2col_compiled_for_a_small_window_copies_what_the_generic_kernel_copies(kh, kw, c):
    x = np.random.default_rng(2).standard_normal((2, 7, 6, c)).astype(np.float32)
    geometry = (kh, kw, 2, 1, 1, 2, 1, 2, 4, 4)   # strides (2, 1), padding (1, 2), dilation (1, 2): 4x4 outputs
    unrolled = gemm_kernels.im2col_for(kh, kw, c)
    assert unrolled is not gemm_kernels.im2col and gemm_kernels.im2col_for(kh, kw, c) is unrolled
    got, expected = (np.full((30, kh * kw * c + 1), np.nan, np.float32) for _ in range(2))
    unrolled(x, *geometry, 1, got)   # rows 1..30 of the 32 in the batch
    gemm_kernels.im2col(x, *geometry, 1, expected)
    assert np.array_equal(got, expected) and np.all(got[:, -1] == 1)


def test_im2col_for_a_large_window_is_the_generic_kernel():
    assert gemm_kernels.im2col_for(3, 3, 8) is gemm_kernels.im2col


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", [
    (8, 2, 2, 0, 1), (7, 3, 2, 1, 1), (9, 3, 1, 1, 2), (6, 2, 1, 0, 1), (5, 3, 3, 1, 1)])
def test_compiled_max_pool_equals_the_numpy_path_with_ties_and_nan(size, kernel, stride, padding, dilation, workers):
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, (3, size, size, 4)).astype(np.float32)   # many ties
    x[0, 0, 0, 0] = np.nan
    windows = windows_2d((size, size), kernel, stride, padding, dilation, "pool")
    y, winners = max_pool2d(x, windows)
    y_ref, winners_ref = max_pool2d(x, windows, compiled=False)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(winners, winners_ref)
    assert winners.dtype == winners_ref.dtype and max_pool2d(x, windows, with_indices=False)[1] is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(max_pool2d_backward(dy, winners, windows, x.shape),
                               max_pool2d_backward(dy, winners, windows, x.shape, compiled=False), rtol=1e-5)


@pytest.mark.parametrize("m, k, n", [(300, 40, 200), (8, 4096, 1000), (20, 20000, 30), (3, 5, 7)])
def test_split_matrix_products_equal_one_product(m, k, n, monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    monkeypatch.setattr(tuning, "MIN_PARALLEL_MACS", 1)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    np.testing.assert_allclose(products.matmul(a, b), a @ b, rtol=1e-12, atol=1e-9)
    out = np.empty((m, n))
    assert products.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(products.matmul(a, b), products.matmul(a, b))   # a fixed split


def test_the_pool_size_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    assert threads.num_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("CNNKIT_NUM_THREADS", bad)
        with pytest.raises(ConfigError, match=f"CNNKIT_NUM_THREADS={bad!r}"):
            threads.num_threads()


def test_blas_is_held_to_one_thread_inside_an_entry_point_and_restored_after():
    def blas_threads():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    assert runtime.entry_point(blas_threads)() == [1] * len(before)
    assert blas_threads() == before


def test_run_parallel_returns_results_in_part_order_and_nests_without_deadlock(monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    assert threads.run_parallel(lambda part: part * part, 4) == [0, 1, 4, 9]
    nested = threads.run_parallel(lambda outer: threads.run_parallel(lambda inner: (outer, inner), 2), 2)
    assert nested == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
