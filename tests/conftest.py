"""Optional packages in the tests: a test marked with one skips, saying what to install, when the
package is missing, so the engine's own tests run with NumPy alone.

- ``@pytest.mark.torch``: PyTorch, the test-only oracle (``pip install torch==2.13.0``);
- ``@pytest.mark.matplotlib``: the pictures (``pip install 'cnnkit[viz]'``);
- ``@pytest.mark.h5py``: Keras ``.h5`` files (``pip install 'cnnkit[h5]'``);
- ``@pytest.mark.keras``: Keras 3, the test-only oracle that writes real Keras files, run on the
  torch backend (no TensorFlow; ``pip install keras==3.15.1``);
- ``@pytest.mark.mpi``: mpi4py and an ``mpiexec`` to start processes with (``pip install 'cnnkit[mpi]'``).

A module whose every test needs one marks itself with ``pytestmark``; a module that mixes them
imports the package inside ``try``, so that it still loads without it.
"""

import importlib
import os

import pytest

# Keras 3 runs on PyTorch here (the oracle already installed; TensorFlow is not): the backend is
# fixed when keras is first imported, so it is set before any test or check imports it.
os.environ["KERAS_BACKEND"] = "torch"

OPTIONAL = {
    "torch": "PyTorch, the test-only oracle: pip install torch==2.13.0 (or make test)",
    "matplotlib": "matplotlib, for the pictures: pip install 'cnnkit[viz]'",
    "h5py": "h5py, for Keras .h5 files: pip install 'cnnkit[h5]'",
    "keras": "Keras 3 (torch backend), the oracle for Keras files: pip install keras==3.15.1 torch==2.13.0",
}


MPI = "mpi4py and mpiexec, for data-parallel training: pip install 'cnnkit[mpi]'"


def pytest_configure(config):
    for module, what in OPTIONAL.items():
        config.addinivalue_line("markers", f"{module}: needs {what}")
    config.addinivalue_line("markers", f"mpi: needs {MPI}")


def pytest_runtest_setup(item):
    for module, what in OPTIONAL.items():
        if item.get_closest_marker(module) is not None and not _importable(module):
            pytest.skip(f"{module} is not installed; install {what}")
    if item.get_closest_marker("mpi") is not None:
        from cnnkit.launch import find_mpiexec
        if not _importable("mpi4py") or find_mpiexec() is None:
            pytest.skip(f"mpi4py or mpiexec is missing; install {MPI}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
