"""Files that real Keras 3 writes, for the tests of cnnkit's Keras readers (tests/io/test_keras3_files.py,
tests/io/test_keras_resnet_files.py, tests/io/test_keras_mobilenet_files.py): one ``keras.applications``
model, its output on a fixed input preprocessed as its weights expect (caffe or tf), and the model
saved in every form Keras users have, each written when first asked.

Keras 3.15 records each layer's name in its ``.weights.h5``; releases before that attribute did
not, so the Keras 3 forms are also written with the attribute removed from the file Keras wrote.
"""

from __future__ import annotations

import shutil
import zipfile

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
FORMS = ["weights.h5", "weights.h5 without names", "keras", "keras without names", "legacy h5"]


class Written:
    """``keras.applications.<keras_class>(weights=None, **keras_args)`` with its weights drawn from
    ``seed``, its output ``want`` on the input ``x`` (two images, already preprocessed: ``caffe``, 0-255
    pixels less the BGR mean, or ``tf``, pixels in [-1, 1]) and its
    files (:meth:`path`). ``randomize`` redraws every variable, batch-norm statistics and convolution
    biases included (a new Keras model has gamma 1, beta 0, mean 0, variance 1 and zero biases, which
    would hide a mapping that swaps them)."""

    def __init__(self, keras, keras_class: str, keras_args: dict, folder, seed: int = 0, randomize: bool = False,
                 preprocessing: str = "caffe"):
        self.keras, self.folder = keras, folder
        keras.utils.set_random_seed(seed)
        self.model = getattr(keras.applications, keras_class)(weights=None, **keras_args)
        rng = np.random.default_rng(seed)
        if randomize:
            randomize_variables(self.model, rng)
        shape = keras_args["input_shape"]
        pixels = rng.uniform(0, 255, (2, *shape))
        self.x = (pixels - CAFFE_MEAN_BGR if preprocessing == "caffe" else pixels / 127.5 - 1).astype(np.float32)
        self.want = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        self.files: dict[str, object] = {}

    def path(self, form: str):
        if form not in self.files:
            self.files[form] = self._write(form)
        return self.files[form]

    def _write(self, form: str):
        if form == "weights.h5":
            path = self.folder / "model.weights.h5"
            self.model.save_weights(path)
        elif form == "keras":
            path = self.folder / "model.keras"
            self.model.save(path)
        elif form == "legacy h5":
            path = self.folder / "model.h5"
            self.model.save(path)
        elif form == "weights.h5 without names":
            path = self.folder / "unnamed.weights.h5"
            shutil.copyfile(self.path("weights.h5"), path)
            assert remove_layer_names(path) > 0
        elif form == "keras without names":
            path = self.folder / "unnamed.keras"
            rezip_without_names(self.path("keras"), path, self.folder)
        else:
            raise ValueError(f"unknown form {form!r}; one of {FORMS}")
        return path


def randomize_variables(model, rng) -> None:
    """Every variable of a Keras model redrawn: kernels keep their scale (a permutation of their
    values), biases and batch-norm shifts small, scales and variances around 1."""
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        name = variable.path.rpartition("/")[2]
        if name in ("gamma", "moving_variance"):
            new = rng.uniform(0.5, 1.5, value.shape)
        elif name in ("beta", "moving_mean", "bias"):
            new = rng.normal(0.0, 0.1, value.shape)
        else:
            new = rng.permutation(value.ravel()).reshape(value.shape)
        variable.assign(new.astype(value.dtype))


def remove_layer_names(path) -> int:
    """Delete the ``name`` attribute of every ``vars`` group: the file as Keras 3 releases wrote it
    before they recorded layer names. Returns how many were removed."""
    import h5py

    removed = []
    with h5py.File(path, "a") as f:
        f.visititems(lambda name, obj: removed.append(obj) if name.endswith("vars") and "name" in obj.attrs else None)
        for group in removed:
            del group.attrs["name"]
    return len(removed)


def rezip_without_names(source, target, folder) -> None:
    """The same .keras archive, its model.weights.h5 without layer names."""
    inner = folder / "inner.weights.h5"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            if info.filename == "model.weights.h5":
                inner.write_bytes(archive.read(info))
                assert remove_layer_names(inner) > 0
                out.write(inner, "model.weights.h5")
            else:
                out.writestr(info, archive.read(info))
    inner.unlink()


def assert_reproduces(got, want) -> None:
    """Within 1e-4 of Keras, relative to the largest output."""
    scale = float(np.abs(want).max())
    assert scale > 0 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
