"""Durable file writes shared by every on-disk format: temp file, fsync, os.replace, SHA-256.

A crash leaves either the old file or the new one, never a torn one. Used by retrieve/'s snapshots,
generate/'s datastores and the job records; it depends on nothing but the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from pathlib import Path

import numpy as np


def sha256(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (datastores and indexes can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> str:
    """Write `data` to `path` via a temp file, fsync and os.replace (the caller fsyncs the folder);
    -> hex SHA-256 of `data`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256(data)


def save_npy_atomic(path: Path, array: np.ndarray) -> tuple[int, str]:
    """Save `array` as .npy atomically; -> (bytes, hex SHA-256)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    data = buf.getvalue()
    return len(data), write_atomic(path, data)
