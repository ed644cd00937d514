"""Shared by the windowed-layer tests: NCHW <-> NHWC for PyTorch, ONNX's reference evaluator and
ONNX Runtime on one pooling node, and the fixture that runs a test on both kernel paths."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(params=["compiled", "numpy"])
def kernel_path(request, monkeypatch):
    """Each numeric test runs on the compiled kernels and on the NumPy reference paths."""
    monkeypatch.setenv("CNNKIT_JIT", "1" if request.param == "compiled" else "0")
    return request.param


def nchw(x):
    """An NHWC array as a channels-first torch tensor that records its gradient."""
    import torch
    return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)


def nhwc(t):
    """A channels-first torch tensor as an NHWC array."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _pool_model(op, x, windows, tensor_type, **attributes):
    """A one-node ONNX model: ``op`` with the windows' kernel, stride and pads (without any ceil-mode overhang)."""
    from onnx import helper
    wh, ww = windows
    pads = [wh.pad_before, ww.pad_before, wh.pad_after - wh.overhang, ww.pad_after - ww.overhang]
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[wh.kernel, ww.kernel], strides=[wh.stride, ww.stride],
                            pads=pads, **attributes)
    b, h, w, c = x.shape
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", tensor_type, [b, c, h, w])],
                              [helper.make_tensor_value_info("y", tensor_type, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def onnx_reference_pool(op, x, windows, **attributes):
    """ONNX's reference evaluator's ``op`` (MaxPool, AveragePool) on NHWC float64 ``x``."""
    pytest.importorskip("onnx", reason="onnx is not installed; ONNX's reference evaluator is a test-only "
                                       "oracle: pip install onnx (or make test)")
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator
    model = _pool_model(op, x, windows, TensorProto.DOUBLE, **attributes)
    y = ReferenceEvaluator(model).run(None, {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    return y.transpose(0, 2, 3, 1)


def onnx_runtime_pool(op, x, windows, **attributes):
    """ONNX Runtime's ``op`` on NHWC float32 ``x``."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed; ONNX Runtime is a test-only "
                                                    "oracle: pip install onnxruntime (or make test)")
    from onnx import TensorProto
    model = _pool_model(op, x, windows, TensorProto.FLOAT, **attributes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0].transpose(0, 2, 3, 1)
