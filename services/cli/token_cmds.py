"""`lodestar token create | list | revoke`: the server's tokens file (LODESTAR_TOKENS_FILE).

create prints the new token once (only its SHA-256 is written); a running server re-reads the file
within a second, so a revoked token stops working without a restart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import settings


def _file(args: argparse.Namespace) -> Path:
    path = args.file or settings().tokens_file
    if path is None:
        raise LodestarError("which tokens file? pass --file or set LODESTAR_TOKENS_FILE")
    return Path(path)


def cmd_token(args: argparse.Namespace) -> int:
    from lodestar.services.tokens import SCOPES, add_token, read_tokens, revoke_token

    path = _file(args)
    if args.action == "create":
        token = add_token(path, args.name, args.scopes)
        if args.json:
            print(json.dumps({"name": args.name, "token": token}))
        else:
            print(token)
            print(f"(shown once: {path} keeps only its SHA-256)", flush=True)
    elif args.action == "revoke":
        revoke_token(path, args.name)
        if not args.json:
            print(f"revoked {args.name!r} in {path}")
    else:
        entries = read_tokens(path)
        if args.json:
            print(json.dumps([{"name": e.name, "scopes": sorted(e.scopes)} for e in entries]))
        for e in [] if args.json else entries:
            print(f"{e.name:24} {','.join(s for s in SCOPES if s in e.scopes)}")
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    t = sub.add_parser(
        "token",
        help="bearer tokens: create (prints it once), list, revoke",
        description="Manage the tokens file a server reads (LODESTAR_TOKENS_FILE). Scopes: read (embed, "
        "search, get, compress, generate, answer, job status), write (upsert, delete, jobs, datastores), "
        "admin (create/drop/snapshot/restore/rebuild collections), worker (indexing workers).",
    )
    t.add_argument("action", choices=["create", "list", "revoke"])
    t.add_argument("name", nargs="?", help="create/revoke: the token's name (shown in access logs)")
    t.add_argument("--name", dest="name_opt", help="the same as NAME")
    t.add_argument("--scopes", default="read", help="create: comma-separated, of read,write,admin,worker")
    t.add_argument("--file", help="tokens file (default LODESTAR_TOKENS_FILE)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_checked)


def _checked(args: argparse.Namespace) -> int:
    args.name = args.name_opt or args.name
    if args.action in ("create", "revoke") and not args.name:
        raise LodestarError(f"token {args.action} needs a name (--name NAME)")
    return cmd_token(args)
