"""The tokens file: who may call the server, as SHA-256 hashes of bearer tokens with their scopes.

Format (JSON): `[{"name": "app", "sha256": "<hex of the token's SHA-256>", "scopes": ["read", "write"]}]`.
The server never holds a token itself; `lodestar token create` prints a new one once and appends its
hash. `TokenFile` re-reads the file when it changes (at most once a second), so a revoke takes
effect without a restart; a file that stops parsing keeps the last good list and says so in the log.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lodestar.durable import sha256, write_atomic
from lodestar.errors import AlreadyExists, InvalidInput, NotFound

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin", "worker")
TOKEN_PREFIX = "lst_"  # recognisable in a secret scanner's rules
RECHECK_S = 1.0  # how often a request may look at the file's mtime


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    scopes: frozenset[str]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes)}


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: what the file keeps."""
    return sha256(token.encode("utf-8"))


def new_token() -> str:
    """A random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(value: str | list[str]) -> frozenset[str]:
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    scopes = frozenset(s for s in items if s)
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    return scopes


def read_tokens(path: Path) -> list[TokenEntry]:
    """The file's entries, checked (InvalidInput names the file and the entry at fault); a missing file is empty."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"tokens file {path}: not readable JSON ({exc})") from None
    if not isinstance(raw, list):
        raise InvalidInput(f"tokens file {path}: expected a JSON list of {{name, sha256, scopes}}")
    entries, names = [], set()
    for i, item in enumerate(raw):
        where = f"tokens file {path}, entry {i}"
        if not isinstance(item, dict) or not {"name", "sha256", "scopes"} <= item.keys():
            raise InvalidInput(f"{where}: needs name, sha256 and scopes")
        digest = str(item["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidInput(f"{where}: sha256 must be 64 hex digits")
        try:
            scopes = parse_scopes(item["scopes"])
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        if item["name"] in names:
            raise InvalidInput(f"{where}: the name {item['name']!r} is used twice")
        names.add(item["name"])
        entries.append(TokenEntry(str(item["name"]), digest, scopes))
    return entries


def write_tokens(path: Path, entries: list[TokenEntry]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps([e.to_json() for e in entries], indent=2) + "\n").encode())


def add_token(path: Path, name: str, scopes: str | list[str]) -> str:
    """Append a new token's hash to the file; -> the token (shown once, stored nowhere)."""
    if not name.strip():
        raise InvalidInput("a token needs a name (it appears in access logs instead of the token)")
    entries = read_tokens(path)
    if any(e.name == name for e in entries):
        raise AlreadyExists(f"a token named {name!r} is already in {path}; revoke it first or pick another name")
    token = new_token()
    write_tokens(path, [*entries, TokenEntry(name, hash_token(token), parse_scopes(scopes))])
    return token


def revoke_token(path: Path, name: str) -> None:
    entries = read_tokens(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise NotFound(f"no token named {name!r} in {path}: known are {', '.join(e.name for e in entries) or 'none'}")
    write_tokens(path, kept)


class TokenFile:
    """The server's view of the tokens file, re-read when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InvalidInput(f"tokens file {self.path} does not exist (create it with `lodestar token create`)")
        self._lock = threading.Lock()
        self._entries = read_tokens(self.path)  # a bad file at start-up stops the server
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def entries(self) -> list[TokenEntry]:
        """The current list (re-read first when the file changed)."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            with self._lock:
                self._checked = now
                self._reload()
        return self._entries

    def _reload(self) -> None:
        try:
            stamp = self._stat()
        except OSError as exc:
            log.warning("tokens file %s: %s; keeping the %d tokens read before", self.path, exc, len(self._entries))
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._entries = read_tokens(self.path)
        except InvalidInput as exc:
            log.warning("%s; keeping the %d tokens read before", exc, len(self._entries))
            return
        log.info("tokens file %s re-read: %d tokens", self.path, len(self._entries))

    def identify(self, token: str) -> TokenEntry | None:
        """The entry whose hash is the token's; every entry is compared, each in constant time."""
        digest = hash_token(token)
        found = None
        for entry in self.entries():
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found
