"""fedaug.atomic: whole files and folders, with the permissions a plain open/mkdir gives."""

from __future__ import annotations

import os
import stat

import pytest

from fedaug.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """``umask(value)`` sets the process umask for one test (restored after)."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_modes_and_secrets_their_own(tmp_path, umask):
    # Prepare
    umask(0o022)
    # Execute
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "y")
    atomic_write_json(tmp_path / "c.json", {"z": 1})
    atomic_write_bytes(tmp_path / "secret.key", b"k", mode=0o600)
    atomic_write_json(tmp_path / "secret.json", {}, mode=0o600)
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("i")
    with atomic_dir(tmp_path / "private", mode=0o700):
        pass
    # Assert: 0644 / 0755 as open() and mkdir() under umask 022; the asked mode for secrets
    assert [_mode(tmp_path / n) for n in ("a.bin", "b.txt", "c.json")] == [0o644] * 3
    assert _mode(tmp_path / "secret.key") == 0o600 and _mode(tmp_path / "secret.json") == 0o600
    assert _mode(tmp_path / "folder") == 0o755 and _mode(tmp_path / "private") == 0o700
    assert (tmp_path / "folder" / "inside.txt").read_text() == "i"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin", "b.txt", "c.json", "folder", "private", "secret.json", "secret.key"]


def test_a_stricter_umask_is_respected_and_rewrites_take_the_new_mode(tmp_path, umask):
    # Prepare: a file written 0600 (as fedaug wrote every file before)
    umask(0o022)
    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"old", mode=0o600)
    # Execute
    atomic_write_bytes(target, b"new")
    umask(0o077)
    atomic_write_bytes(tmp_path / "strict", b"s")
    with atomic_dir(tmp_path / "strict-dir"):
        pass
    # Assert
    assert target.read_bytes() == b"new" and _mode(target) == 0o644
    assert _mode(tmp_path / "strict") == 0o600 and _mode(tmp_path / "strict-dir") == 0o700


def test_a_failed_write_leaves_the_old_file_or_folder_and_no_temporary(tmp_path, monkeypatch):
    # Prepare
    atomic_write_bytes(tmp_path / "f", b"old")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("old")

    def broken_fsync(fd):
        raise OSError("disk full")

    # Execute
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("new")
        raise RuntimeError("interrupted")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "f", b"new")
    # Assert
    assert (tmp_path / "f").read_bytes() == b"old"
    assert (tmp_path / "d" / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]
