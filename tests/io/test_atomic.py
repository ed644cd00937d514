"""atomic_path / atomic_open / atomic_write: all-or-nothing replacement of a file."""

from __future__ import annotations

import os

import pytest

from cnnkit.io import atomic_open, atomic_path, atomic_write


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert target.read_bytes() == b"old"  # untouched while the block runs
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failure_keeps_the_target_and_removes_the_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failure_without_a_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_temp_file_removed_even_if_the_block_deleted_it(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.unlink()
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
    assert len(synced) == 2
    assert os.path.basename(synced[0]).startswith(".out.bin.")  # the temp file, before the rename
    assert synced[1] == os.path.realpath(tmp_path)


def test_new_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_atomic_open_text_and_binary(tmp_path):
    with atomic_open(tmp_path / "a.json", "w") as handle:
        handle.write("{\"é\": 1}")
    with atomic_open(tmp_path / "b.bin") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "{\"é\": 1}"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]


def test_atomic_open_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', received mode='r'"):
        with atomic_open(tmp_path / "x", "r"):
            pass
    assert os.listdir(tmp_path) == []


def test_atomic_write_calls_the_writer_with_a_temp_path(tmp_path):
    seen = []

    def writer(path):
        seen.append(path)
        path.write_text("hello")

    atomic_write(tmp_path / "greeting.txt", writer)
    assert (tmp_path / "greeting.txt").read_text() == "hello"
    assert seen[0] != tmp_path / "greeting.txt" and not seen[0].exists()


def test_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "missing" / "f"):
            pass


KILLED_WRITER = """
import os, sys
from cnnkit.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), 9)
"""


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "model.safetensors")],
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    left = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(left) == 1, os.listdir(tmp_path)
    (tmp_path / ".notes.tmp").write_text("a user's own file")   # not cnnkit's pattern: kept
    with atomic_path(tmp_path / "metrics.csv") as tmp:   # any later write to the folder
        tmp.write_text("epoch\n")
    assert sorted(os.listdir(tmp_path)) == [".notes.tmp", "metrics.csv"]


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    with atomic_path(tmp_path / "a.bin") as outer:
        outer.write_bytes(b"a")
        with atomic_path(tmp_path / "b.bin") as inner:
            inner.write_bytes(b"b")
        assert outer.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


def test_a_file_replaced_by_the_writer_gets_the_umask_permissions(tmp_path):
    def replace_with_private_file(tmp):
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)   # as a writer using mkstemp would
        os.close(fd)
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "model.safetensors", replace_with_private_file)
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_model_files_get_the_same_permissions_as_other_outputs(tmp_path):
    from cnnkit.io import write_safetensors
    import numpy as np
    old = os.umask(0o022)
    try:
        write_safetensors(tmp_path / "w.safetensors", {"x": np.zeros(2, np.float32)})
        with atomic_open(tmp_path / "report.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("w.safetensors", "report.json")}
    assert modes == {"w.safetensors": 0o644, "report.json": 0o644}


def test_a_missing_folder_is_reported_with_the_users_path(tmp_path):
    target = tmp_path / "missing" / "feats.npy"
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_path(target):
            pass
    assert caught.value.filename == str(target)


def test_check_writable(tmp_path):
    from cnnkit.io import check_writable
    check_writable(tmp_path / "out.npy")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="missing"):
        check_writable(tmp_path / "missing" / "out.npy")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
