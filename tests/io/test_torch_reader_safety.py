"""read_torch never runs code from a file, fails clearly on bad files, and stays lean."""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

from cnnkit.errors import WeightsError
from cnnkit.io import read_torch


class _Payload:
    """Unpickling this calls ``func(*args)``: what a hostile checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _qualnames(func) -> set[str]:
    # Protocol-2 pickles (torch's default) write Python 2 module names: __builtin__, commands.
    module = func.__module__
    py2_module = _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)
    return {f"{module}.{func.__name__}", f"{py2_module}.{func.__name__}"}


def _payloads(marker):
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (os.system, (cmd,)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
        "builtins.exec": (exec, (code,)),
        "builtins.eval": (eval, (code,)),
    }


@pytest.fixture(params=["os.system", "subprocess.call", "builtins.exec", "builtins.eval"])
def payload(request, tmp_path):
    marker = tmp_path / "pwned"
    func, args = _payloads(marker)[request.param]
    return func, args, marker


@pytest.mark.torch
def test_the_payload_really_runs_under_plain_torch_load(tmp_path, save_torch):
    # Guards the tests below: the hostile file must actually be hostile.
    marker = tmp_path / "ran"
    path = save_torch({"w": torch.ones(2), "x": _Payload(os.system, f"touch {marker}")},
                      tmp_path / "evil.pth", "zip")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.torch
def test_malicious_checkpoint_saved_by_torch_is_refused(tmp_path, save_torch, fmt, payload):
    func, args, marker = payload
    evil = {"features.0.weight": torch.ones(2, 2), "hook": _Payload(func, *args)}
    path = save_torch(evil, tmp_path / "evil.pth", fmt)
    with pytest.raises(WeightsError) as info:
        read_torch(path)
    message = str(info.value)
    assert any(f"refusing to load {name} from" in message for name in _qualnames(func))
    assert str(path) in message and "tensor-rebuild" in message
    assert not marker.exists()


def _handmade_os_system(marker) -> bytes:
    # Protocol-0 GLOBAL naming "os system" literally, as an attacker would write it.
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def test_handmade_pickle_in_zip_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _handmade_os_system(marker))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    with pytest.raises(WeightsError, match=r"refusing to load os\.system from .*evil\.pth"):
        read_torch(path)
    assert not marker.exists()


def test_handmade_pickle_in_legacy_file_is_refused(tmp_path, legacy_header):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_header + _handmade_os_system(marker))
    with pytest.raises(WeightsError, match=r"refusing to load os\.system from .*evil\.pth"):
        read_torch(path)
    assert not marker.exists()


def test_payload_hidden_in_the_legacy_magic_number_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(WeightsError, match="refusing to load"):
        read_torch(path)
    assert not marker.exists()


@pytest.mark.torch
def test_a_pickled_module_is_refused_with_advice(tmp_path, save_torch, fmt):
    path = save_torch(torch.nn.Linear(2, 2), tmp_path / "module.pth", fmt)
    with pytest.raises(WeightsError, match=r"refusing to load torch\.nn\..*state_dict"):
        read_torch(path)


# ----------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"cannot read .*nope\.pth: file not found"):
        read_torch(path)


def test_directory(tmp_path):
    with pytest.raises(WeightsError, match=str(tmp_path)):
        read_torch(tmp_path)


@pytest.mark.parametrize("content", [
    np.random.default_rng(0).bytes(4096),
    b"features.0.weight = [1, 2, 3]\nthis is a text file\n",
    b"",
], ids=["random", "text", "empty"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"weights\.pth is not a PyTorch checkpoint"):
        read_torch(path)


def test_a_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    with pytest.raises(WeightsError, match=r"plain\.pkl is a pickle but not a PyTorch checkpoint"):
        read_torch(path)


def test_zip_without_torch_records(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(WeightsError, match=r"other\.zip is a zip archive but not a torch checkpoint"):
        read_torch(path)


@pytest.mark.torch
@pytest.mark.parametrize("fraction", [0.5, 0.05])
def test_truncated_file(tmp_path, vgg_sd, save_torch, fmt, fraction):
    path = save_torch(vgg_sd, tmp_path / "cut.pth", fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsError, match=r"cut\.pth .*(truncated|corrupted)"):
        read_torch(path)


@pytest.mark.torch
def test_state_dict_without_tensors(tmp_path, save_torch, fmt):
    path = save_torch({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth", fmt)
    with pytest.raises(WeightsError, match=r"meta\.pth holds no tensors"):
        read_torch(path)


@pytest.mark.torch
def test_single_tensor_is_not_a_state_dict(tmp_path, save_torch, fmt):
    path = save_torch(torch.ones(3), tmp_path / "one.pth", fmt)
    with pytest.raises(WeightsError, match="single tensor"):
        read_torch(path)


@pytest.mark.torch
def test_tensor_reaching_past_its_storage_is_refused(tmp_path, legacy_header, storage_record):
    # A crafted size/stride must not let as_strided read memory outside the storage.
    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (4, 4), (4, 1), False, {})

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, Storage) else None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump({"w": Tensor()})
    path = tmp_path / "overrun.pth"
    path.write_bytes(legacy_header + body.getvalue() + pickle.dumps(["0"], protocol=2)
                     + storage_record(np.zeros(4, np.float32).tobytes(), 4))
    with pytest.raises(WeightsError, match=r"overrun\.pth is corrupted: tensor 'w'"):
        read_torch(path)


# -------------------------------------------------------------------------- memory


def _big_state_dict() -> dict:
    # ~100 MB in a few VGG-like layers, plus a view that forces the copying path.
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(4096, 2048, generator=gen)  # 32 MiB storage, saved whole
    return {
        "features.0.weight": torch.randn(1024, 1024, 8, generator=gen),   # 32 MiB
        "classifier.0.weight": torch.randn(4096, 2048, generator=gen),    # 32 MiB
        "classifier.0.bias": torch.randn(4096, generator=gen),
        "classifier.3.weight": big[::2],                                  # view: 16 MiB copy
        "classifier.3.bias": torch.randn(2048, generator=gen).to(torch.bfloat16),
    }


@pytest.mark.torch
def test_peak_memory_stays_under_twice_the_file_size(tmp_path, save_torch, fmt):
    path = save_torch(_big_state_dict(), tmp_path / "big.pth", fmt)
    file_size = path.stat().st_size
    assert file_size > 90 * 2**20
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = read_torch(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result_bytes = sum(a.nbytes for a in got.values())
    assert peak > 0.9 * result_bytes  # the measurement sees NumPy's buffers at all
    assert peak < 2 * file_size, f"peak {peak / 2**20:.0f} MiB for a {file_size / 2**20:.0f} MiB file"
    assert got["classifier.3.weight"].shape == (2048, 2048)


@pytest.mark.torch
def test_reading_imports_neither_torch_nor_h5py(tmp_path, vgg_sd, save_torch, fmt):
    path = save_torch(vgg_sd, tmp_path / "vgg.pth", fmt)
    code = (
        "import sys; from cnnkit.io import read_torch; "
        f"sd = read_torch({str(path)!r}); assert len(sd) == 32; "
        "print(sorted(m for m in ('torch', 'h5py', 'tensorflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_pickle_cannot_alter_the_rebuild_functions(tmp_path):
    # GLOBAL then BUILD with slot state would set __defaults__ on a plain function object,
    # changing it for every later load in the process.
    from cnnkit.io import _torch_pickle

    before = _torch_pickle._rebuild_tensor_v2.__defaults__
    path = tmp_path / "tamper.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl",
                         b"ctorch._utils\n_rebuild_tensor_v2\n(N(dS'__defaults__'\n(I1\ntstb.")
    with pytest.raises(WeightsError, match=r"tamper\.pth"):
        read_torch(path)
    assert _torch_pickle._rebuild_tensor_v2.__defaults__ == before
