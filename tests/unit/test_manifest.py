import hashlib

import pytest

from kollm.manifest import atomic_path, record_files, remove_stale_temps, sha256_file, verify_files


def test_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 40_000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out" / "model.gguf"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not final.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    final = tmp_path / "merged"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / ".model.gguf.tmp-123").write_bytes(b"x")
    (tmp_path / "keep.gguf").write_bytes(b"y")
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.gguf"]


def test_verify_files_detects_a_changed_byte(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello world")
    records = record_files(tmp_path, [path])
    assert verify_files(tmp_path, records) == []
    path.write_bytes(b"hello World")
    assert verify_files(tmp_path, records) == ["a.bin: sha256 differs"]
