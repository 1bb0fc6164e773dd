"""The README's five-minute tour runs as written: its Python block with the client and its first
command-line block, against a real server (the tiny model, so only the plumbing is checked)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def _block(after: str, lang: str) -> str:
    """The first fenced block of `lang` after the heading `after`."""
    text = README.read_text()
    start = text.index(after)
    m = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def test_python_tour(tiny_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    srv = tiny_server()
    code = _block("### Python client", "python").replace("127.0.0.1:50051", srv.address)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own code)
    assert "(2, " in capsys.readouterr().out  # it printed the vectors' shape


def test_command_line_tour(tiny_server: Any, tmp_path: Path) -> None:
    srv = tiny_server()
    (tmp_path / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"id": f"c{i}", "text": f"corpus text {i}", "metadata": {"year": 2000 + i}}) + "\n"
            for i in range(3)
        )
    )
    env = {**os.environ, "LODESTAR_SERVER": srv.address}
    for line in _block("### Command line", "bash").splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        args = shlex.split(command)
        assert args[0] == "lodestar"
        run = subprocess.run(
            [sys.executable, "-m", "lodestar.services.cli", *args[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, f"{command}: {run.stderr[-2000:]}"
