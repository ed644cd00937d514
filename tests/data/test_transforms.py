"""Transforms and ImageNet preprocessing, checked against hand-computed values and torch."""

import numpy as np
import pytest
from PIL import Image

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

from cnnkit.data import (CenterCrop, Compose, ImagenetPreprocess, Normalize, RandomCrop,
                         RandomHorizontalFlip, Resize, ResizeShorter, apply_transform,
                         imagenet_eval_transform, imagenet_preprocess)
from cnnkit.errors import ConfigError, DataError


def _image(h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.float32)


def test_caffe_mode_swaps_to_bgr_and_subtracts_bgr_means():
    img = np.array([[[10.0, 20.0, 30.0]]], dtype=np.float32)  # R, G, B
    out = imagenet_preprocess(img, "caffe")
    expected = [30 - 103.939, 20 - 116.779, 10 - 123.68]  # B, G, R
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-4)
    assert out.dtype == np.float32


def test_torch_mode_scales_and_standardises_rgb():
    img = np.array([[[255.0, 0.0, 127.5]]], dtype=np.float32)
    out = imagenet_preprocess(img, "torch")
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_tf_mode_maps_to_minus_one_one():
    img = np.array([[[0.0, 127.5, 255.0]]], dtype=np.float32)
    np.testing.assert_allclose(imagenet_preprocess(img, "tf")[0, 0], [-1, 0, 1], atol=1e-6)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_preprocess_batch_equals_per_image_and_leaves_input(mode):
    batch = np.stack([_image(seed=s) for s in range(3)])
    before = batch.copy()
    out = imagenet_preprocess(batch, mode)
    for i in range(3):
        np.testing.assert_allclose(out[i], imagenet_preprocess(batch[i], mode), rtol=1e-6)
    np.testing.assert_array_equal(batch, before)
    np.testing.assert_allclose(ImagenetPreprocess(mode)(batch[0]), out[0], rtol=1e-6)


def test_preprocess_errors_name_the_mode_and_shape():
    with pytest.raises(ConfigError, match=r"mode='bgr'"):
        imagenet_preprocess(_image(), "bgr")
    with pytest.raises(DataError, match=r"\(H, W, 3\).*\(6, 5, 1\)"):
        imagenet_preprocess(_image(c=1), "caffe")


@pytest.mark.parametrize("hw,expected", [((300, 400), (256, 341)), ((400, 300), (341, 256)),
                                         ((256, 256), (256, 256)), ((100, 150), (256, 384))])
def test_resize_shorter_output_size_like_torchvision(hw, expected):
    assert ResizeShorter(256)(np.zeros((*hw, 3), np.float32)).shape == (*expected, 3)


@pytest.mark.torch
@pytest.mark.parametrize("size", [16, 50])
def test_resize_shorter_matches_torch_antialiased_bilinear(size):
    img = _image(30, 40)
    out = ResizeShorter(size)(img)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(x, size=out.shape[:2], mode="bilinear",
                                          antialias=True, align_corners=False)
    np.testing.assert_allclose(out, ref[0].permute(1, 2, 0).numpy(), atol=1e-2)
    assert out.dtype == np.float32


def test_resize_matches_pillow_uint8_up_to_rounding():
    img = _image(30, 40)
    out = Resize((12, 17))(img)
    pil = Image.fromarray(img.astype(np.uint8)).resize((17, 12), Image.BILINEAR)
    assert out.shape == (12, 17, 3)
    assert np.abs(out - np.asarray(pil, np.float32)).max() <= 1.0


def test_center_crop_uses_rounded_offsets():
    img = np.arange(7 * 8, dtype=np.float32).reshape(7, 8, 1)
    out = CenterCrop((2, 3))(img)
    # top = round((7 - 2) / 2) = round(2.5) = 2, left = round(5 / 2) = 2
    np.testing.assert_array_equal(out, img[2:4, 2:5])
    with pytest.raises(DataError, match=r"crop 9x9 is larger than the image 7x8"):
        CenterCrop(9)(img)


def test_normalize_per_channel_and_channel_mismatch():
    img = np.full((2, 2, 3), 10.0, np.float32)
    out = Normalize([1, 2, 3], [1, 2, 4])(img)
    np.testing.assert_allclose(out[0, 0], [9, 4, 1.75])
    with pytest.raises(DataError, match=r"mean has 2 values but the image has 3 channels"):
        Normalize([1, 2], [1, 1])(img)
    with pytest.raises(ConfigError, match=r"std must be > 0"):
        Normalize(0, 0)


def test_random_crop_is_a_window_of_the_padded_image():
    img = _image(8, 8)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(200):
        out = RandomCrop(8, padding=2)(img, rng)
        hits = [(t, l) for t in range(5) for l in range(5)
                if np.array_equal(padded[t:t + 8, l:l + 8], out)]
        assert hits, "crop is not a window of the padded image"
        seen.add(hits[0])
    assert len(seen) == 25  # every corner position is reachable


def test_random_crop_seed_and_rng_give_reproducible_results():
    img = _image(10, 10)
    first, second = RandomCrop(6, seed=5), RandomCrop(6, seed=5)
    for _ in range(5):
        np.testing.assert_array_equal(first(img), second(img))
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(RandomCrop(6)(img, r1), RandomCrop(6)(img, r2))
    with pytest.raises(DataError, match=r"crop 11x11 does not fit the padded image 10x10"):
        RandomCrop(11)(img)
    with pytest.raises(ConfigError, match=r"padding=-1"):
        RandomCrop(3, padding=-1)


def test_horizontal_flip_probability():
    img = _image(4, 5)
    rng = np.random.default_rng(0)
    assert all(np.array_equal(RandomHorizontalFlip(0.0)(img, rng), img) for _ in range(20))
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(img, rng), img[:, ::-1])
    flips = sum(not np.array_equal(RandomHorizontalFlip(0.5)(img, rng), img) for _ in range(400))
    assert 150 < flips < 250
    with pytest.raises(ConfigError, match=r"p=1.5"):
        RandomHorizontalFlip(1.5)


def test_random_transforms_do_not_touch_global_numpy_state():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    RandomCrop(4, padding=1, seed=0)(_image())
    RandomHorizontalFlip(seed=0)(_image())
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_compose_passes_rng_and_accepts_one_argument_callables():
    img = _image(10, 10)
    pipeline = Compose([RandomCrop(6), RandomHorizontalFlip(), lambda x: x / 255])
    a = pipeline(img, np.random.default_rng(1))
    b = pipeline(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 6, 3) and a.max() <= 1.0
    assert apply_transform(lambda x: x + 1, img)[0, 0, 0] == img[0, 0, 0] + 1
    with pytest.raises(ConfigError, match=r"transforms\[1\] is not callable"):
        Compose([CenterCrop(2), 3])


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_imagenet_eval_transform_pipeline(mode):
    img = _image(300, 400)
    out = imagenet_eval_transform(mode)(img)
    manual = imagenet_preprocess(CenterCrop(224)(ResizeShorter(256)(img)), mode)
    assert out.shape == (224, 224, 3)
    np.testing.assert_allclose(out, manual, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, (2,), (2, 0), 2.5, "big"])
def test_bad_sizes_are_config_errors(bad):
    with pytest.raises(ConfigError, match=r"`size`"):
        CenterCrop(bad)
