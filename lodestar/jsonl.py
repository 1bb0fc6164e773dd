"""Reading JSON-lines inputs (QA files, triplets, prompts) with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lodestar.errors import InvalidInput


def read_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of every non-blank line; InvalidInput for a missing file or bad JSON."""
    if not Path(path).is_file():
        raise InvalidInput(f"{str(path)!r} does not exist (a .jsonl file was expected)")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInput(f"{path}:{n}: not valid JSON ({e.msg})") from None
