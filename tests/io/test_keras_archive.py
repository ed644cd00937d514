"""The ``.keras`` archive reader on archives made here: what Keras writes is read, and hostile
archives (path traversal, zip bombs, duplicated or missing members, bad JSON, names that disagree)
are refused with a WeightsError naming the file, before they allocate what they declare."""

from __future__ import annotations

import base64
import json
import zipfile

import numpy as np
import pytest

from cnnkit.errors import WeightsError
from cnnkit.io import read_weights
from cnnkit.io.keras_archive import is_keras_archive, read_keras_archive

from refusal import assert_refused

h5py = pytest.importorskip("h5py", reason="the Keras reader needs the optional h5py")

RNG = np.random.default_rng(0)
KERNEL = RNG.standard_normal((3, 3, 3, 4)).astype(np.float32)
BIAS = RNG.standard_normal(4).astype(np.float32)
DENSE = RNG.standard_normal((16, 2)).astype(np.float32)


def _layer(class_name, name, **config):
    return {"module": "keras.layers", "class_name": class_name, "config": {"name": name, **config}}


CONFIG = {"module": "keras.src.models.functional", "class_name": "Functional", "config": {
    "name": "m", "layers": [_layer("InputLayer", "input_layer"), _layer("Conv2D", "block1_conv1", use_bias=True),
                            _layer("Flatten", "flatten"), _layer("Dense", "fc1", use_bias=False)]}}


def _weights_h5(path, names=True):
    """The Keras 3 layout of CONFIG's model: layers/<class path>/vars/<position>."""
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        for layer, own, arrays in [("input_layer", "input_layer", []), ("conv2d", "block1_conv1", [KERNEL, BIAS]),
                                   ("flatten", "flatten", []), ("dense", "fc1", [DENSE])]:
            group = f.create_group(f"layers/{layer}/vars")
            if names:
                group.attrs["name"] = own
            for index, array in enumerate(arrays):
                group.create_dataset(str(index), data=array)
    return path


def _archive(path, tmp_path, members=None, names=True, compression=zipfile.ZIP_STORED, extra=()):
    """A .keras archive; ``members`` overrides or adds members by name (None drops one)."""
    content = {"metadata.json": json.dumps({"keras_version": "3.15.1"}).encode(),
               "config.json": json.dumps(CONFIG).encode(),
               "model.weights.h5": _weights_h5(tmp_path / "inner.h5", names).read_bytes()}
    content.update(members or {})
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in list(content.items()) + list(extra):
            if data is not None:
                archive.writestr(name, data)
    return path


EXPECTED = {"block1_conv1/kernel": KERNEL, "block1_conv1/bias": BIAS, "fc1/kernel": DENSE}


def _assert_expected(got):
    assert list(got) == list(EXPECTED)
    for key, value in EXPECTED.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


@pytest.mark.parametrize("names", [True, False], ids=["names in the weights", "names from config.json"])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_an_archive_as_keras_writes_it_is_read_under_keras_names(tmp_path, names, compression):
    path = _archive(tmp_path / "m.keras", tmp_path, names=names, compression=compression)
    _assert_expected(read_keras_archive(path))
    _assert_expected(read_weights(path))


def test_an_archive_is_recognised_by_its_members_whatever_its_name(tmp_path):
    path = _archive(tmp_path / "model.zip", tmp_path)
    assert is_keras_archive(path)
    _assert_expected(read_weights(path))
    torch_like = tmp_path / "model.pth"
    with zipfile.ZipFile(torch_like, "w") as archive:
        archive.writestr("model/data.pkl", b"\x80\x02}q\x00.")
    assert not is_keras_archive(torch_like)


def test_no_member_is_written_anywhere_whatever_its_name(tmp_path):
    """Members named to escape a folder are never extracted: only the three members are read,
    and the weights go to a file of cnnkit's own name in a private temporary folder."""
    evil = {"../escaped.txt": b"x", "/tmp/absolute.txt": b"x", "assets/../../up.txt": b"x",
            "../model.weights.h5": b"not hdf5"}
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    path = _archive(work / "m.keras", tmp_path, extra=evil.items())
    _assert_expected(read_keras_archive(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["deep", "er", "m.keras", "inner.h5"])


def test_config_json_is_data_only(tmp_path):
    """A configuration naming modules and functions imports none of them."""
    config = json.loads(json.dumps(CONFIG))
    activation = {"module": "os", "class_name": "system", "config": "touch pwned"}
    config["config"]["layers"][1].update(module="os", registered_name="os>system",
                                         config={"name": "block1_conv1", "activation": activation})
    path = _archive(tmp_path / "m.keras", tmp_path, {"config.json": json.dumps(config).encode()})
    _assert_expected(read_keras_archive(path))
    assert not (tmp_path / "pwned").exists()


def _refused(path, match):
    return assert_refused(read_keras_archive, path, WeightsError, match)


def test_a_config_larger_than_its_cap_is_refused_before_it_is_read(tmp_path):
    text = b'"' + base64.b64encode(RNG.bytes(13 << 20)) + b'"'   # 17.5 MB that hardly compresses
    path = _archive(tmp_path / "m.keras", tmp_path, {"config.json": text}, compression=zipfile.ZIP_DEFLATED)
    _refused(path, rf"config.json declares {len(text):,} bytes, more than the 16,777,216 cnnkit reads of it")


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, member):
    path = _archive(tmp_path / "m.keras", tmp_path, {member: bytes(200 << 20)}, compression=zipfile.ZIP_DEFLATED)
    _refused(path, rf"{member} would inflate \d+ bytes to 209715200, more than the 100:1 cnnkit accepts")


def _patch_central_record(path, name: str, offset: int, value: int, width: int) -> int:
    """Overwrite a field of ``name``'s central directory record; return the old value."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + length] == name.encode():
            old = int.from_bytes(data[at + offset:at + offset + width], "little")
            data[at + offset:at + offset + width] = value.to_bytes(width, "little")
            path.write_bytes(bytes(data))
            return old
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no central record for {name}")


def test_a_member_past_the_end_of_the_file_is_refused(tmp_path):
    path = _archive(tmp_path / "m.keras", tmp_path)
    size = path.stat().st_size
    compressed = _patch_central_record(path, "model.weights.h5", 20, 2 * size, 4)
    assert 0 < compressed < size
    _refused(path, r"truncated or corrupted: member model.weights.h5 claims \d+ bytes at offset")


def test_an_encrypted_member_is_refused(tmp_path):
    path = _archive(tmp_path / "m.keras", tmp_path)
    _patch_central_record(path, "config.json", 8, 0x1, 2)   # general purpose flags: bit 0, encrypted
    _refused(path, r"member config.json is encrypted")


@pytest.mark.parametrize("members, match", [
    ({"model.weights.h5": None}, r"a zip archive but not a Keras 3 .keras file: it has no model.weights.h5"),
    ({"model.weights.h5": None, "model.weights.npz": b"x"},
     r"no model.weights.h5 \(it holds \['model.weights.npz'\]: weights saved as npz or in shards"),
    ({"config.json": None}, r"it has no config.json"),
    ({"config.json": b"{not json"}, r"config.json is not JSON text \(JSONDecodeError"),
    ({"config.json": b"[" * 100_000 + b"]" * 100_000}, r"config.json is not JSON text \(RecursionError"),
    ({"config.json": b"\xff\xfe"}, r"config.json is not JSON text \(UnicodeDecodeError"),
    ({"config.json": b"[]"}, r"config.json is not a JSON object"),
    ({"metadata.json": b"\x00"}, r"metadata.json is not JSON text"),
    ({"model.weights.h5": b"\x89HDF\r\n\x1a\n not really"}, r"m.keras:model.weights.h5 is not a readable HDF5 file"),
])
def test_archives_keras_does_not_write_are_refused(tmp_path, members, match):
    message = _refused(_archive(tmp_path / "m.keras", tmp_path, members), match)
    assert "inner" not in message and "cnnkit-keras-" not in message  # the archive is named, not the copy


def test_a_duplicated_member_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = _archive(tmp_path / "m.keras", tmp_path, extra=[("config.json", b"{}")])
    _refused(path, r"the archive holds config.json twice")


def test_names_that_disagree_with_config_json_are_refused(tmp_path):
    config = json.loads(json.dumps(CONFIG))
    config["config"]["layers"][1]["config"]["name"] = "block9_conv9"
    path = _archive(tmp_path / "m.keras", tmp_path, {"config.json": json.dumps(config).encode()})
    _refused(path, r"name layers differently: conv2d \('block1_conv1' in the weights, 'block9_conv9' in config.json\)")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_a_keras_file_that_is_no_zip_is_refused_as_a_keras_archive(tmp_path, content):
    path = tmp_path / "m.keras"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"m.keras is not a readable .keras archive"):
        read_weights(path)


def test_a_missing_archive(tmp_path):
    with pytest.raises(WeightsError, match=r"cannot read .*absent.keras: file not found"):
        read_keras_archive(tmp_path / "absent.keras")
