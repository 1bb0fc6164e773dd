"""`lodestar calibrate NAME` prints the choice with its evidence, for each kind of calibration record."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from lodestar.services.cli import fusion_cmds


def printed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], record: dict[str, Any]) -> str:
    @contextlib.contextmanager
    def connect(args: argparse.Namespace) -> Iterator[Any]:
        yield SimpleNamespace(calibrate=lambda name, seed=None: SimpleNamespace(calibration=record))

    monkeypatch.setattr(fusion_cmds, "connect", connect)
    assert fusion_cmds.cmd_calibrate(argparse.Namespace(name="c", seed=None, json=False)) == 0
    return capsys.readouterr().out


def test_a_one_line_text_record_shows_its_ratio_and_rule(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = printed(
        monkeypatch,
        capsys,
        {
            "choice": {"fusion": "weighted", "alpha": 0.4, "adaptive": False},
            "fallback": False,
            "unit": "half",
            "method": "one-line texts: half of each sampled chunk ...",
            "dense_alone": 0.78,
            "sparse_alone": 0.93,
            "ratio": 0.8387,
            "pseudo_queries": 200,
            "refresh_at_chunks": 2934,
        },
    )
    assert "fusion auto = weighted alpha 0.4" in out and "one-line texts:" in out
    assert "ratio: 0.8387" in out and "chosen" not in out


def test_a_fallback_record_says_why(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(
        monkeypatch,
        capsys,
        {
            "choice": {"fusion": "weighted", "alpha": 0.1},
            "fallback": True,
            "reason": "too small to calibrate: 5 chunks",
        },
    )
    assert "fallback: too small to calibrate: 5 chunks" in out
