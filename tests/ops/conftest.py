"""Every ops test runs twice: on the compiled fast paths and on the NumPy reference paths."""

import pytest


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernel_path(request, monkeypatch):
    monkeypatch.setenv("CNNKIT_JIT", "1" if request.param == "compiled" else "0")
    return request.param
