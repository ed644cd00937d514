"""The test set the viz commands and the report read is prepared as the model's training data was."""

import numpy as np
import pytest
from PIL import Image

from cnnkit.models import vgg_small
from cnnkit.viz.inputs import load_test_data

SHADE = 200


@pytest.fixture()
def folder(tmp_path):
    """Two classes of 12 flat 16 x 16 photos, every channel at SHADE."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(np.full((16, 16, 3), SHADE, np.uint8)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def _first_image(folder, preprocessing: str) -> np.ndarray:
    model = vgg_small(input_shape=(16, 16, 3), num_classes=2, widths=(4, 8), dense=8)
    model.meta["preprocessing"] = preprocessing
    return load_test_data(str(folder), model)[0][0]


def test_a_cnnkit_train_model_reads_the_folder_scaled_as_it_was_trained(folder):
    np.testing.assert_allclose(_first_image(folder, "unit"), SHADE / 255, rtol=1e-6)


def test_a_model_from_before_folders_were_scaled_reads_0_to_255(folder):
    np.testing.assert_allclose(_first_image(folder, "none"), SHADE, rtol=1e-6)


def test_a_transferred_model_reads_the_folder_as_classify_reads_photos(folder):
    # caffe: BGR order, the ImageNet channel means subtracted, no scaling
    np.testing.assert_allclose(_first_image(folder, "caffe")[0, 0], SHADE - np.array([103.939, 116.779, 123.68]),
                               rtol=1e-5)
