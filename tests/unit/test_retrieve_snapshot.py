"""Snapshot files: atomic generations, a manifest written last, and verification that catches a
flipped byte, a truncated or missing file and an unknown format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.errors import Unavailable
from lodestar.retrieve import snapshot as snap
from lodestar.retrieve.snapshot import (
    FORMAT_VERSION,
    MANIFEST,
    CorruptSnapshot,
    has_snapshot,
    read_snapshot,
    snapshot_bytes,
    write_snapshot,
)

FILES = {"dense": b"\x00\x01dense-index-bytes" * 10, "sparse": b"sparse-index-bytes"}


def data_file(directory: Path, name: str) -> Path:
    return directory / json.loads((directory / MANIFEST).read_text())["files"][name]["file"]


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    manifest = write_snapshot(tmp_path, FILES, {"seq": 7, "store_id": "abc"})
    assert manifest["format_version"] == FORMAT_VERSION and manifest["seq"] == 7
    assert manifest["files"]["dense"]["bytes"] == len(FILES["dense"])
    assert manifest["files"]["dense"]["sha256"] == snap.sha256(FILES["dense"])
    files, read = read_snapshot(tmp_path)
    assert files == FILES and read == manifest
    assert has_snapshot(tmp_path)
    assert snapshot_bytes(tmp_path) == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert snapshot_bytes(tmp_path / "nothing") == 0


def test_flipped_byte_is_detected_naming_file_and_digests(tmp_path: Path) -> None:
    write_snapshot(tmp_path, FILES, {"seq": 1})
    path = data_file(tmp_path, "dense")
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshot) as e:
        read_snapshot(tmp_path)
    msg = str(e.value)
    assert path.name in msg and "(dense)" in msg and "SHA-256" in msg
    assert snap.sha256(FILES["dense"]) in msg and snap.sha256(bytes(raw)) in msg
    assert isinstance(e.value, Unavailable)  # unmapped leaks still become UNAVAILABLE


def test_truncated_missing_and_bad_manifest(tmp_path: Path) -> None:
    write_snapshot(tmp_path, FILES, {"seq": 1})
    sparse = data_file(tmp_path, "sparse")
    sparse.write_bytes(FILES["sparse"][:-3])
    with pytest.raises(
        CorruptSnapshot, match=rf"is {len(FILES['sparse']) - 3} bytes; the manifest expects {len(FILES['sparse'])}"
    ):
        read_snapshot(tmp_path)
    sparse.unlink()
    with pytest.raises(CorruptSnapshot, match="named by the manifest is missing"):
        read_snapshot(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptSnapshot, match="not valid JSON"):
        read_snapshot(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 99, "files": {}}))
    with pytest.raises(CorruptSnapshot, match="format_version 99; this build reads format_version 1"):
        read_snapshot(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1, "files": {"dense": {"file": "x"}}}))
    with pytest.raises(CorruptSnapshot, match="malformed 'files'"):
        read_snapshot(tmp_path)
    (tmp_path / MANIFEST).unlink()
    assert not has_snapshot(tmp_path)
    with pytest.raises(CorruptSnapshot, match="manifest .* is missing"):
        read_snapshot(tmp_path)


def test_new_generation_replaces_old_and_cleans_leftovers(tmp_path: Path) -> None:
    write_snapshot(tmp_path, FILES, {"seq": 1})
    (tmp_path / ".dense.dead.tmp").write_bytes(b"left by a crash")
    second = {"dense": b"new dense", "sparse": b"new sparse"}
    manifest = write_snapshot(tmp_path, second, {"seq": 2})
    files, read = read_snapshot(tmp_path)
    assert files == second and read["seq"] == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([MANIFEST, *(e["file"] for e in manifest["files"].values())])


def test_crash_before_manifest_keeps_old_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_snapshot(tmp_path, FILES, {"seq": 1})
    real = snap.write_atomic

    def dies_on_manifest(path: Path, data: bytes) -> None:
        if path.name == MANIFEST:
            raise OSError("disk full")  # the process dies after the data files are down
        real(path, data)

    monkeypatch.setattr(snap, "write_atomic", dies_on_manifest)
    with pytest.raises(OSError):
        write_snapshot(tmp_path, {"dense": b"half", "sparse": b"written"}, {"seq": 2})
    monkeypatch.setattr(snap, "write_atomic", real)
    files, manifest = read_snapshot(tmp_path)  # the old generation is untouched and still verifies
    assert files == FILES and manifest["seq"] == 1


def test_bad_names_and_reserved_meta(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, {"../x": b""}, {})
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, {MANIFEST: b""}, {})
    with pytest.raises(ValueError):
        write_snapshot(tmp_path, {"a": b""}, {"files": 1})
    write_snapshot(tmp_path, {"a": b""}, {})  # an empty file is fine
    assert read_snapshot(tmp_path)[0] == {"a": b""}
