"""The command line's surface: --version, help for every option of `serve`, JSON errors."""

from __future__ import annotations

import argparse
import json

import pytest

import lodestar
from lodestar.services.cli import build_parser, main


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
        if name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"lodestar {lodestar.__version__}"


def test_every_serve_option_is_explained() -> None:
    serve = _subparser(build_parser(), "serve")
    options = [a for a in serve._actions if a.option_strings]  # noqa: SLF001
    assert len(options) >= 8
    assert all(a.help and len(a.help) > 10 for a in options), [a.option_strings for a in options if not a.help]


def test_json_errors_go_to_stdout_as_one_object(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = main(["collection", "stats", "x", "--json", "--server", "127.0.0.1:1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["error"]["code"] == "UNAVAILABLE" and out["error"]["message"]
