"""Index snapshots on disk: data files plus a manifest (sizes, SHA-256) that is written last.

Layout of a snapshot folder:

    manifest.json                 {"format_version", "seq", ..., "files": {name: {file, bytes, sha256}}}
    <name>.<generation>           one file per logical name (e.g. dense.3f2a..., sparse.3f2a...)

Every write goes to a new generation: data files are written to a temp name, fsynced and renamed,
then the manifest is replaced atomically, and only then are the files of older generations removed.
A crash at any point leaves either the old manifest with its (untouched) files or the new one with
its (already durable) files, so a crash never looks like corruption; a flipped byte always does.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from lodestar.durable import fsync_dir, sha256, write_atomic
from lodestar.errors import Unavailable

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_RESERVED = ("format_version", "files")


class CorruptSnapshot(Unavailable):
    """A snapshot failed verification (missing file, size or SHA-256 mismatch, unknown format)."""


def has_snapshot(directory: Path) -> bool:
    """Whether `directory` holds a manifest (a snapshot was completed there at least once)."""
    return (Path(directory) / MANIFEST).is_file()


def write_snapshot(directory: Path, files: dict[str, bytes], meta: dict[str, Any]) -> dict[str, Any]:
    """Durably write `files` (logical name -> bytes) and a manifest holding `meta`; returns the manifest."""
    directory = Path(directory)
    for key in _RESERVED:
        if key in meta:
            raise ValueError(f"snapshot meta may not set {key!r}")
    for name in files:
        if not name or "/" in name or name.startswith(".") or name == MANIFEST:
            raise ValueError(f"bad snapshot file name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    generation = secrets.token_hex(8)
    entries: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        fname = f"{name}.{generation}"
        write_atomic(directory / fname, data)
        entries[name] = {"file": fname, "bytes": len(data), "sha256": sha256(data)}
    fsync_dir(directory)  # the data files are durable before the manifest names them
    manifest = {"format_version": FORMAT_VERSION, **meta, "files": entries}
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    fsync_dir(directory)
    _remove_unreferenced(directory, manifest)
    return manifest


def _remove_unreferenced(directory: Path, manifest: dict[str, Any]) -> None:
    """Delete files of older generations and temp files left by a crash."""
    keep = {MANIFEST} | {e["file"] for e in manifest["files"].values()}
    for p in directory.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)


def _read(path: Path, what: str, missing: str = "is missing") -> bytes:
    """The bytes of `path`; CorruptSnapshot naming `what` when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptSnapshot(f"{what} {missing}") from None
    except OSError as e:
        raise CorruptSnapshot(f"{what} cannot be read: {e}") from None


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest of `directory`; CorruptSnapshot if it is missing, unreadable or of another format."""
    path = Path(directory) / MANIFEST
    raw = _read(path, f"snapshot manifest {path}")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptSnapshot(f"snapshot manifest {path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise CorruptSnapshot(f"snapshot manifest {path} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CorruptSnapshot(
            f"snapshot manifest {path} has format_version {version!r}; this build reads format_version {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(e, dict)
        and isinstance(e.get("file"), str)
        and isinstance(e.get("bytes"), int)
        and isinstance(e.get("sha256"), str)
        for e in files.values()
    ):
        raise CorruptSnapshot(f"snapshot manifest {path} has a malformed 'files' table")
    return manifest


def read_snapshot(directory: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Read and verify every file named by the manifest; returns (logical name -> bytes, manifest)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    out: dict[str, bytes] = {}
    for name, entry in manifest["files"].items():
        fname = entry["file"]
        if "/" in fname or fname.startswith("."):
            raise CorruptSnapshot(f"snapshot manifest in {directory} names a file outside the folder: {fname!r}")
        path = directory / fname
        data = _read(path, f"snapshot file {path} ({name})", "named by the manifest is missing")
        if len(data) != entry["bytes"]:
            raise CorruptSnapshot(
                f"snapshot file {path} ({name}) is {len(data)} bytes; the manifest expects {entry['bytes']}"
            )
        digest = sha256(data)
        if digest != entry["sha256"]:
            raise CorruptSnapshot(
                f"snapshot file {path} ({name}) has SHA-256 {digest}; the manifest expects {entry['sha256']}"
            )
        out[name] = data
    return out, manifest


def snapshot_bytes(directory: Path) -> int:
    """Bytes on disk of the snapshot files in `directory` (0 when there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
