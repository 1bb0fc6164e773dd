"""The datastore upload of `lodestar datastore build|add` resumes without adding a batch twice, even
when a run stops between a batch's write and the note of its progress."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lodestar.services.cli.generate_cmds import _resumable_upload


class Crash(Exception):
    pass


def test_upload_resumes_without_repeating_a_written_batch(tmp_path: Path) -> None:
    src = tmp_path / "texts.jsonl"
    texts = [f"text {i}" if i % 4 else "  " for i in range(1, 12)]  # blanks are read, never written
    src.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    args = argparse.Namespace(input=[str(src)], pattern="**/*", field="text", exclude=None, batch=3, quiet=True)
    progress = tmp_path / "store.progress"
    store: list[str] = []
    calls = 0

    def write_then_stop(batch: list[str]) -> None:
        nonlocal calls
        calls += 1
        store.extend(batch)
        if calls == 2:  # the batch is in the store; the run dies before noting it
            raise Crash

    with pytest.raises(Crash):
        _resumable_upload(args, progress, write_then_stop, lambda: len(store))
    run = _resumable_upload(args, progress, store.extend, lambda: len(store))
    want = [t for t in texts if t.strip()]
    assert store == want  # each once, in order
    assert run["resumed_after"] > 0 and run["texts"] == len(texts)

    # a run that stops before its write goes through (the store did not grow): that batch is sent again
    store.clear()
    progress.unlink()
    calls = 0

    def stop_before(batch: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Crash
        store.extend(batch)

    with pytest.raises(Crash):
        _resumable_upload(args, progress, stop_before, lambda: len(store))
    _resumable_upload(args, progress, store.extend, lambda: len(store))
    assert store == want
