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
