"""Read corpus texts for a datastore: plain files, folders (recursively, by glob) and JSONL files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from lodestar.errors import InvalidInput, NotFound

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_jsonl(path: Path, field: str = "text") -> Iterator[str]:
    """Each line's `field` (lines without it, or blank lines, are refused / skipped)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            value = row.get(field) if isinstance(row, dict) else None
            if not isinstance(value, str):
                raise InvalidInput(f"{path}:{lineno}: every line needs a string field {field!r}")
            yield value


def read_file(path: Path, field: str = "text") -> Iterator[str]:
    """A .jsonl file yields one text per line; any other file is one text (undecodable: skipped)."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        yield from read_jsonl(path, field)
        return
    try:
        yield path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return


def iter_texts(
    paths: Iterable[str | Path], pattern: str = "**/*", field: str = "text", exclude: Iterable[str] = ()
) -> Iterator[str]:
    """Texts of files, folders (files matching `pattern`, sorted) and JSONL files, in order.

    `exclude` holds folder or file names skipped anywhere below a folder (e.g. "test", "__pycache__").
    """
    skip = set(exclude) | {"__pycache__", ".git"}
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            yield from read_file(path, field)
        elif path.is_dir():
            for p in sorted(path.glob(pattern)):
                if p.is_file() and not skip.intersection(p.relative_to(path).parts):
                    yield from read_file(p, field)
        else:
            raise NotFound(f"corpus path {str(path)!r} does not exist (give files, folders or .jsonl files)")
