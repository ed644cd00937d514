"""Softmax, log-softmax and the fused cross-entropy against PyTorch, and their stability."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from cnnkit.errors import DataError, ShapeError
from cnnkit.ops.loss import log_softmax, softmax, softmax_backward, softmax_cross_entropy


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 9), classes=st.integers(1, 40), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
@pytest.mark.torch
def test_loss_and_gradient_match_torch_cross_entropy(batch, classes, seed, scale):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    loss, grad = softmax_cross_entropy(logits, labels)
    zt = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(zt, torch.tensor(labels))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.torch
@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(3, 5), (1, 1), (2, 4, 3, 10), (6, 1000)]), seed=st.integers(0, 2**16))
def test_softmax_and_log_softmax_match_torch(shape, seed):
    rng = np.random.default_rng(seed)
    z = (5 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.softmax(zt, dim=-1)
    yt.backward(torch.tensor(dy))
    y = softmax(z)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(softmax_backward(dy, y), zt.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(log_softmax(z), torch.log_softmax(torch.tensor(z), -1).numpy(), rtol=1e-4, atol=1e-5)


def test_huge_logits_do_not_overflow():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [3e38, 1e4, 0.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = softmax_cross_entropy(logits, np.array([1, 2, 0]))
        probs, logs = softmax(logits), log_softmax(logits)
    assert np.isfinite(loss) and np.isfinite(grad).all() and np.isfinite(probs).all()
    # row 0: label 1 is 1e4 below the max, row 1: uniform, row 2: the right class dominates
    assert loss == pytest.approx((1e4 + np.log(3)) / 3, rel=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-6)
    assert logs[0, 0] == 0 and logs[0, 2] == -2e4


def test_float64_stays_float64_and_input_is_not_modified():
    logits = np.random.default_rng(0).standard_normal((4, 3))
    before = logits.copy()
    loss, grad = softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))
    assert grad.dtype == np.float64 and softmax(logits).dtype == np.float64 and isinstance(loss, float)
    np.testing.assert_array_equal(logits, before)
    # the gradient of the mean loss sums to zero per row and is (p - 1) / B at the label
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)
    assert grad[0, 0] == pytest.approx((softmax(logits)[0, 0] - 1) / 4)


def test_label_out_of_range_names_label_and_classes():
    logits = np.zeros((3, 10), np.float32)
    with pytest.raises(DataError) as info:
        softmax_cross_entropy(logits, np.array([1, 10, 3]))
    assert str(info.value) == ("softmax_cross_entropy: label 10 is outside [0, 10) for 10 classes; "
                               "labels must be class indices 0..9")
    with pytest.raises(DataError, match=r"label -1 is outside \[0, 10\)"):
        softmax_cross_entropy(logits, np.array([-1, 0, 0]))


def test_labels_must_be_integer_indices_of_the_batch():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(DataError) as info:
        softmax_cross_entropy(logits, np.eye(4, dtype=np.float32)[:3])
    assert str(info.value) == ("softmax_cross_entropy: labels must be 3 integer class indices, shape (3,); "
                               "received shape (3, 4) dtype float32; convert one-hot labels with argmax(axis=1)")
    with pytest.raises(DataError, match="received shape \\(2,\\) dtype int64"):
        softmax_cross_entropy(logits, np.array([0, 1], np.int64))


def test_logits_must_be_a_float_matrix():
    with pytest.raises(ShapeError) as info:
        softmax_cross_entropy(np.zeros((2, 3, 4), np.float32), np.array([0, 1]))
    assert str(info.value) == ("softmax_cross_entropy: logits must be a float array of shape (batch, classes); "
                               "received shape (2, 3, 4) dtype float32")
