"""load_image and ImageFolder on small files written with Pillow."""

import warnings

import numpy as np
import pytest
from PIL import Image

from cnnkit.data import ImageFolder, load_image
from cnnkit.errors import ConfigError, DataError


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tree(root):
    """root/cat: 2 PNGs (one in a sub-folder); root/dog: 1 JPEG (+ files to ignore)."""
    (root / "dog").mkdir(parents=True)
    (root / "cat" / "more").mkdir(parents=True)
    Image.fromarray(_rgb(6, 4, 1)).save(root / "cat" / "b.png")
    Image.fromarray(_rgb(5, 7, 2)).save(root / "cat" / "more" / "a.PNG")
    Image.fromarray(_rgb(8, 8, 3)).save(root / "dog" / "z.jpg", quality=95)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.jpg").write_bytes(b"")
    (root / ".git").mkdir()


def test_load_image_png_is_exact_float32_rgb(tmp_path):
    pixels = _rgb(5, 6)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (5, 6, 3)
    np.testing.assert_array_equal(img, pixels)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_load_image_converts_to_rgb(tmp_path, mode):
    Image.fromarray(_rgb(4, 4)).convert(mode).save(tmp_path / "a.png")
    img = load_image(str(tmp_path / "a.png"))
    assert img.shape == (4, 4, 3)
    if mode == "L":
        np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_load_image_resizes_bilinear(tmp_path):
    Image.fromarray(_rgb(20, 30)).save(tmp_path / "a.png")
    expected = np.asarray(Image.fromarray(_rgb(20, 30)).resize((5, 10), Image.BILINEAR))
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", size=(10, 5)), expected)
    assert load_image(tmp_path / "a.png", size=7).shape == (7, 7, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(_rgb(4, 10)).save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").shape == (10, 4, 3)


def test_load_image_errors_name_the_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken.jpg: cannot identify image"):
        load_image(bad)
    with pytest.raises(DataError, match=r"image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match=r"size=\(3, 0\)"):
        load_image(bad, size=(3, 0))


def test_image_folder_classes_labels_and_order(tmp_path):
    _tree(tmp_path)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert [p.name for p, _ in ds.samples] == ["b.png", "a.PNG", "z.jpg"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1])
    img, label = ds[0]
    assert label == 0 and img.dtype == np.float32
    np.testing.assert_array_equal(img, _rgb(6, 4, 1))
    assert ds[1][0].shape == (5, 7, 3)  # no size: each image keeps its own


def test_image_folder_size_and_transform(tmp_path):
    _tree(tmp_path)
    ds = ImageFolder(tmp_path, size=(3, 2), transform=lambda img: img / 255)
    shapes = {ds[i][0].shape for i in range(len(ds))}
    assert shapes == {(3, 2, 3)} and ds[2][0].max() <= 1.0


def test_corrupt_image_warns_and_is_skipped(tmp_path):
    _tree(tmp_path)
    (tmp_path / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.warns(UserWarning, match=r"skipping .*corrupt.jpg"):
        ds = ImageFolder(tmp_path)
    assert len(ds) == 3 and [p.name for p, _ in ds.skipped] == ["corrupt.jpg"]
    assert all(p.name != "corrupt.jpg" for p, _ in ds.samples)


def test_corrupt_image_raises_with_path_and_reason(tmp_path):
    _tree(tmp_path)
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot read image .*empty.png: cannot identify image file"):
        ImageFolder(tmp_path, on_error="raise")


def _truncated_jpeg(path):
    Image.fromarray(_rgb(64, 64)).save(path, quality=90)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])  # header intact, scan data cut


def test_truncated_jpeg_is_caught_by_decode_verification(tmp_path):
    _tree(tmp_path)
    _truncated_jpeg(tmp_path / "dog" / "cut.jpg")
    with pytest.warns(UserWarning, match=r"(?i)skipping .*cut.jpg: .*truncated"):
        ds = ImageFolder(tmp_path, verify="decode")
    assert len(ds) == 3
    # The fast header check lets it through; reading it then fails loudly, never zeros.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lazy = ImageFolder(tmp_path)
    index = [p.name for p, _ in lazy.samples].index("cut.jpg")
    with pytest.raises(DataError, match=r"(?i)cannot read image .*cut.jpg: .*truncated"):
        lazy[index]


def test_image_folder_argument_errors(tmp_path):
    with pytest.raises(DataError, match=r"is not a directory"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no class folders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"no readable images under"):
        ImageFolder(tmp_path)
    with pytest.raises(ConfigError, match=r"on_error='ignore'"):
        ImageFolder(tmp_path, on_error="ignore")
    with pytest.raises(ConfigError, match=r"verify='full'"):
        ImageFolder(tmp_path, verify="full")


def test_a_link_loop_lists_each_image_once_under_its_own_class(tmp_path):
    _tree(tmp_path)
    (tmp_path / "cat" / "up").symlink_to("..")            # cat/up/cat/up/... and cat/up/dog/...
    (tmp_path / "dog" / "again").symlink_to(tmp_path / "dog")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(tmp_path)
    assert [(p.name, label) for p, label in ds.samples] == [("b.png", 0), ("a.PNG", 0), ("z.jpg", 1)]
    assert sum("not following the link" in str(w.message) for w in caught) == 2


def test_a_link_out_of_the_data_folder_is_not_followed(tmp_path):
    _tree(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(_rgb(4, 4, 9)).save(outside / "secret.png")
    (tmp_path / "data" / "cat" / "out").symlink_to(outside)
    with pytest.warns(UserWarning, match="leads out of"):
        ds = ImageFolder(tmp_path / "data")
    assert "secret.png" not in [p.name for p, _ in ds.samples] and len(ds) == 3


def test_a_link_inside_its_class_folder_is_followed_once(tmp_path):
    _tree(tmp_path)
    (tmp_path / "cat" / "alias").symlink_to(tmp_path / "cat" / "more")
    ds = ImageFolder(tmp_path)
    assert sorted(p.name for p, _ in ds.samples) == ["a.PNG", "b.png", "z.jpg"]
