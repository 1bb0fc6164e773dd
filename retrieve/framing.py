"""The byte layout every in-memory index snapshot shares: magic, header length, JSON header, body.

magic (8 bytes) | uint32 little-endian header length | header JSON (has "format") | body
"""

from __future__ import annotations

import json
import struct
from typing import Any


def frame(magic: bytes, header: dict[str, Any], body: bytes) -> bytes:
    """Snapshot bytes: `header` (JSON, keys sorted) then `body`, behind `magic`."""
    head = json.dumps(header, sort_keys=True).encode()
    return magic + struct.pack("<I", len(head)) + head + body


def unframe(data: bytes, magic: bytes, fmt: int, what: str) -> tuple[dict[str, Any], memoryview]:
    """(header, body) of bytes written by frame(); ValueError naming `what` if they are not one."""
    view = memoryview(data)
    if len(view) < len(magic) + 4 or bytes(view[: len(magic)]) != magic:
        raise ValueError(f"not a{'n' if what[0] in 'AEIOU' else ''} {what} snapshot (bad magic)")
    (hlen,) = struct.unpack_from("<I", view, len(magic))
    start = len(magic) + 4
    try:
        head = json.loads(bytes(view[start : start + hlen]))
    except ValueError as exc:
        raise ValueError(f"{what} snapshot header is corrupt: {exc}") from None
    if not isinstance(head, dict) or head.get("format") != fmt:
        found = head.get("format") if isinstance(head, dict) else None
        raise ValueError(f"{what} snapshot format {found!r} is not {fmt}")
    return head, view[start + hlen :]
