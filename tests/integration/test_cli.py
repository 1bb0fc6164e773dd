"""The `lodestar` CLI as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lodestar.services.client import Client

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent.parent / "fixtures"


def lodestar(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lodestar.services.cli", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


def test_info_json(server) -> None:  # type: ignore[no-untyped-def]
    out = lodestar("--server", server.address, "info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model"] == "SmolLM2-135M-Instruct" and info["health"] == "SERVING"
    human = lodestar("--server", server.address, "info")
    assert "dimensions  576" in human.stdout


def test_embed_texts_prints_vectors(server) -> None:  # type: ignore[no-untyped-def]
    out = lodestar("--server", server.address, "embed", "hello there", "general kenobi", "--json", "--mode", "last")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["shape"] == [2, 576] and res["mode"] == "last"


def test_embed_file_to_npy_resumes(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = [f"document number {i} talks about topic {i % 3}" for i in range(10)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "vecs.npy"
    # A previous run finished batch 0 (rows 0-3) and was interrupted: it is kept, not redone.
    parts = tmp_path / "vecs.npy.parts"
    parts.mkdir()
    np.save(parts / "000000.npy", np.zeros((4, 576), dtype=np.float32))
    run = lodestar("--server", server.address, "embed", "--file", str(src), "--out", str(out), "--batch-size", "4")
    assert run.returncode == 0, run.stderr
    table = np.load(out)
    assert table.shape == (10, 576)
    assert not table[:4].any(), "the finished batch was reused"
    with Client(server.address) as c:
        expected = c.embed(texts[4:]).vectors
    assert np.allclose(table[4:], expected, atol=1e-3)
    assert not parts.exists()


def test_server_error_exits_nonzero_with_message(server) -> None:  # type: ignore[no-untyped-def]
    run = lodestar("--server", server.address, "embed", "x", "--mode", "nope")
    assert run.returncode == 1
    assert "INVALID_ARGUMENT" in run.stderr and "valid modes are" in run.stderr


def test_eval_sts_prints_one_json_line() -> None:
    run = lodestar("eval", "sts", str(FIXTURES / "stsb_dev_head.tsv"), "--mode", "prompteol", "--quiet")
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["mode"] == "prompteol" and result["pairs"] == 40
    assert 0.3 < result["spearman"] <= 1.0
