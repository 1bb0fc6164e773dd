"""Hybrid fusion commands: `lodestar calibrate NAME` chooses a collection's fusion now (what
`--fusion auto` uses) and prints the choice with its evidence."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lodestar.services.cli.common import connect, plain


def cmd_calibrate(args: argparse.Namespace) -> int:
    with connect(args) as c:
        info = c.calibrate(args.name, seed=args.seed)
    record = info.calibration or {}
    if args.json:
        print(json.dumps(plain(record)))
        return 0
    choice = record.get("choice", {})
    print(f"{args.name}: fusion auto = {choice.get('fusion')} alpha {choice.get('alpha')}", end="")
    print(" (adaptive)" if choice.get("adaptive") else "")
    if record.get("fallback"):
        print(f"  fallback: {record.get('reason')}")
        return 0
    if record.get("unit") == "half":  # one-line texts: the weight follows from the two sides' ratio
        print(f"  one-line texts: {record.get('method')}")
    for name in ("chosen", "dense_alone", "sparse_alone", "ratio"):
        if record.get(name) is not None:
            print(f"  {name}: {json.dumps(record.get(name))}")
    print(f"  {record.get('pseudo_queries')} pseudo-queries; refreshed at {record.get('refresh_at_chunks')} chunks")
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `calibrate` at the top level."""
    cal = sub.add_parser(
        "calibrate",
        help="choose a collection's hybrid fusion now from pseudo-queries drawn from its documents (no labels)",
    )
    cal.add_argument("name")
    cal.add_argument("--seed", type=int, help="which pseudo-queries are drawn (default 0, as the server's own)")
    cal.add_argument("--json", action="store_true", help="the whole calibration record")
    cal.set_defaults(func=cmd_calibrate)
