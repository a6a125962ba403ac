"""File hashing and atomic JSON writing (facebench.files)."""
import hashlib
import json
import os
from pathlib import Path

import pytest

from facebench.files import CHUNK_SIZE, file_sha256, write_json_atomic

# ------------------------------------------------------------------ file_sha256


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 7])
def test_file_sha256_matches_hashing_the_whole_file(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_file_sha256_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "absent")


# ------------------------------------------------------------------ write_json_atomic


def test_write_json_atomic_writes_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "er" / "doc.json"
    write_json_atomic(path, {"x": 1, "path": Path("/a/b"), "nan": float("nan")})
    assert json.loads(path.read_text(), parse_constant=lambda c: c) == {"x": 1, "path": "/a/b", "nan": "NaN"}
    for i in range(20):
        write_json_atomic(path, {"i": i})
    assert json.loads(path.read_text()) == {"i": 19}
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]


def test_write_json_atomic_failure_keeps_old_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "doc.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {1: "a", "b": 2})  # mixed key types cannot be sorted
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


# ------------------------------------------------------------------ only regular files are read


def test_fifo_device_symlink_and_folder_are_refused_without_reading(tmp_path):
    from facebench.files import read_regular

    os.mkfifo(tmp_path / "fifo.jpg")  # no writer: a blocking open or read would hang the test
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # would read without end
    (tmp_path / "folder.jpg").mkdir()
    for name, kind in (("fifo.jpg", "a FIFO"), ("zero.jpg", "a character device"), ("folder.jpg", "a folder")):
        with pytest.raises(OSError, match=f"not a regular file \\({kind}\\)") as info:
            read_regular(tmp_path / name)
        assert info.value.filename == str(tmp_path / name)
        with pytest.raises(OSError, match="not a regular file"):
            file_sha256(tmp_path / name)
    (tmp_path / "ok.jpg").write_bytes(b"data")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "ok.jpg")
    assert read_regular(tmp_path / "link.jpg") == b"data"
