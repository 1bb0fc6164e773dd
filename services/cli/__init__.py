"""The `lodestar` command line. Each `*_cmds` module holds one side's commands and registers them.

Commands that talk to a server take `--server HOST:PORT` and the connection options (`--tls`, `--tls-ca`,
`--tls-cert`, `--tls-key`, `--token`; before or after the command, or their LODESTAR_* variables); `--json`
prints one JSON object for scripts. Errors exit non-zero with the server's message.
"""

from __future__ import annotations

import argparse
import json
import sys

import lodestar
from lodestar.errors import LodestarError
from lodestar.services.cli import (
    bench_retrieve_cmds,
    compress_cmds,
    config_cmds,
    embed_cmds,
    fusion_cmds,
    generate_cmds,
    jobs_cmds,
    retrieve_cmds,
    token_cmds,
    train_cmds,
)

MODULES = (
    embed_cmds,
    retrieve_cmds,
    bench_retrieve_cmds,
    fusion_cmds,
    jobs_cmds,
    compress_cmds,
    generate_cmds,
    train_cmds,
    config_cmds,
    token_cmds,
)

# How a command reaches a server: option -> help. Each is taken before or after the command name.
CONNECTION = {
    "--server": "HOST:PORT of a running server (LODESTAR_SERVER)",
    "--tls": "connect with TLS, trusting the system's root CAs (LODESTAR_TLS)",
    "--tls-ca": "connect with TLS, trusting this CA bundle (PEM) for the server's certificate (LODESTAR_TLS_CA)",
    "--tls-cert": "client certificate (PEM) for servers that require one (mTLS) (LODESTAR_TLS_CERT)",
    "--tls-key": "the client certificate's key (PEM) (LODESTAR_TLS_KEY)",
    "--token": "bearer token sent with every call (LODESTAR_TOKEN; prefer the variable: arguments show in ps)",
}


def build_parser() -> argparse.ArgumentParser:
    from lodestar.services.settings import Settings

    default_server = Settings().server
    p = argparse.ArgumentParser(prog="lodestar", description="Lodestar retrieval-and-embedding stack")
    p.add_argument("--version", action="version", version=f"lodestar {lodestar.__version__}")
    p.add_argument("--server", default=default_server, help=f"HOST:PORT of a running server (default {default_server})")
    for option, text in CONNECTION.items():
        if option != "--server":
            _add_connection(p, option, text, None)
    sub = p.add_subparsers(dest="command", required=True)
    groups = {
        "eval": sub.add_parser("eval", help="quality evaluations").add_subparsers(dest="eval", required=True),
        "bench": sub.add_parser("bench", help="speed benchmarks").add_subparsers(dest="bench", required=True),
        "train": sub.add_parser("train", help="train LoRA adapters (peft)").add_subparsers(dest="train", required=True),
    }
    for module in MODULES:
        module.register(sub, groups)
    _server_after_command(p)
    return p


def _add_connection(parser: argparse.ArgumentParser, option: str, text: str, default: object) -> None:
    if option == "--tls":
        parser.add_argument(option, action="store_true", default=default if default is not None else False, help=text)
    else:
        parser.add_argument(option, default=default, help=text, metavar="TOKEN" if option == "--token" else None)


def _server_after_command(parser: argparse.ArgumentParser) -> None:
    """Let every command take the connection options too (`lodestar search q -c docs --server h:1`);
    given there, they override the global ones, which stay the defaults. A command that declares one
    itself (serve's --tls-cert is the server's certificate) keeps its own."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():  # noqa: SLF001 (argparse has no public walk)
        assert isinstance(action, argparse._SubParsersAction)  # noqa: SLF001 (what _subparsers holds)
        for child in action.choices.values():
            if child._subparsers:  # noqa: SLF001
                _server_after_command(child)
                continue
            taken = {o for a in child._actions for o in a.option_strings}  # noqa: SLF001
            for option, text in CONNECTION.items():
                if option not in taken:
                    _add_connection(child, option, text, argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    import os

    # FAISS's OpenMP threads spin while waiting; beside torch and gRPC threads on a small machine
    # that made index builds ~40x slower. Passive waiting must be set before FAISS loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lodestar.services.client import ClientError

    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args) or 0)
    except ClientError as exc:
        return _error(exc.code, exc.message, as_json, 1)
    except LodestarError as exc:
        return _error("INVALID_ARGUMENT", str(exc), as_json, 2)
    except KeyboardInterrupt:
        return 130


def _error(code: str, message: str, as_json: bool, status: int) -> int:
    """Report a failure: `error: CODE: message` on stderr, or with --json one object on stdout."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"error: {code}: {message}" if status == 1 else f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
