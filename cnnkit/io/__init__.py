"""Weight files in and out: safetensors, PyTorch checkpoints, Keras HDF5 and ``.keras`` archives, atomic writes.

Nothing here imports torch or TensorFlow, and no reader executes code from a file.
"""

from cnnkit.io.atomic import atomic_open, atomic_path, atomic_write, check_writable
from cnnkit.io.keras_archive import read_keras_archive
from cnnkit.io.keras_h5 import read_keras_h5, read_keras_h5_with_names
from cnnkit.io.pretrained import detect_source, load_pretrained, read_weights
from cnnkit.io.safetensors_io import (
    read_safetensors,
    read_safetensors_metadata,
    write_safetensors,
)
from cnnkit.io.torch_reader import read_torch

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "detect_source",
    "load_pretrained",
    "read_weights",
    "read_keras_archive",
    "read_keras_h5",
    "read_keras_h5_with_names",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_torch",
    "write_safetensors",
]
