"""`lodestar serve` imports no training, evaluation or benchmark code.

Those live in subpackages named `train`, `eval` (per engine) and `bench` (`lodestar.bench`); a
module is off the serving path when a component of its dotted name is one of those, or when it has
one of the names such code had before it moved there. Three views of the rule, each in a fresh
process so that what this test session imported does not count:

- importing the CLI and the server factory (`python -X importtime`);
- a server built as `lodestar serve` builds it, every service on, after the tiny random model has
  loaded: the server imports its engines lazily, at load (`sys.modules`);
- every lodestar module those could still import later, e.g. inside a request handler: a static
  walk of the import statements (function bodies included) from what the loaded server holds.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import lodestar

ROOT = Path(lodestar.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "protos"))
import generate as protogen  # noqa: E402  (protos/generate.py: Python package -> folder)

OFF_SERVING = {"train", "eval", "bench"}
# Where such code lived before it moved into those subpackages (issue 26): no shim may come back.
OLD_NAMES = {
    "lodestar.backbone.training",
    "lodestar.embed.evaluate",
    "lodestar.retrieve.evaluate",
    "lodestar.retrieve.bench",
    "lodestar.compress_ctx.evaluate",
    "lodestar.compress_ctx.reader",
    "lodestar.compress_ctx.selective",
    "lodestar.compress_ctx.train_abstractive",
    "lodestar.generate.evaluate",
    "lodestar.generate.workloads",
    "lodestar.services.benchmarks",
    "lodestar.services.localprocs",
}
# One module of each kind at its new home: keeps OFF_SERVING's vocabulary true to the layout.
MOVED = (
    "lodestar.backbone.train.loop",
    "lodestar.embed.train.common",
    "lodestar.embed.eval.sts",
    "lodestar.retrieve.eval.beir",
    "lodestar.compress_ctx.eval.qa",
    "lodestar.compress_ctx.train.extractive",
    "lodestar.generate.eval.specdec",
    "lodestar.bench.served",
    "lodestar.bench.procs",
    "lodestar.bench.retrieval",
)


def off_serving(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "lodestar" and (bool(OFF_SERVING & set(parts)) or name in OLD_NAMES)


def _env() -> dict[str, str]:
    """A plain serving environment: no LODESTAR_* setting but the model cache; safe sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LODESTAR_") and k != "PYTHONPATH"}
    if "LODESTAR_CACHE_DIR" in os.environ:
        env["LODESTAR_CACHE_DIR"] = os.environ["LODESTAR_CACHE_DIR"]
    env["PYTHONSAFEPATH"] = "1"
    return env


def source(module: str) -> Path | None:
    """The file that defines a lodestar module (package __init__.py or module .py), without importing it."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        folder = protogen.PACKAGE_DIRS.get(".".join(parts[:i]))
        if folder is None:
            continue
        base = ROOT / folder / Path(*parts[i:])
        for candidate in (base / "__init__.py", base.with_name(base.name + ".py") if parts[i:] else None):
            if candidate is not None and candidate.is_file():
                return candidate
        return None
    return None


def imported_by(module: str) -> set[str]:
    """Every lodestar module `module` imports anywhere in its source (and their parent packages)."""
    path = source(module)
    if path is None:
        return set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .mod import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "lodestar":
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in found if source(name) is not None}


def test_the_rule_matches_the_layout() -> None:
    for name in MOVED:
        assert source(name) is not None, f"{name} is gone: update MOVED and OFF_SERVING to where it went"
        assert off_serving(name), name
    shims = sorted(name for name in OLD_NAMES if source(name) is not None)
    assert not shims, f"modules back at their pre-move paths: {shims}"


def test_importing_cli_and_server_loads_no_train_eval_bench(tmp_path: Path) -> None:
    # The `lodestar` console script imports the CLI package; `serve` then imports the server factory.
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import lodestar.services.cli, lodestar.services.server"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    names = [line.rpartition("|")[2].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "lodestar.services.server" in names, out.stderr[-3000:]
    assert not [n for n in names if off_serving(n)]


# A server as `lodestar serve` builds it (create_server, start, model load), with the tiny random
# model; every engine must be up, then it prints what the process has imported. (Not the CLI: its
# command modules import eval and bench code inside `eval`/`bench`/`train` commands, which the static
# walk below would follow; the previous test covers importing it.)
SERVE = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])  # tests/, for tinymodel
from transformers import AutoTokenizer
from tinymodel import build_tiny
from lodestar.services.server import create_server, runtime_of, shutdown
from lodestar.services.settings import SERVICES, Settings
import lodestar.generate.decoder as decoder  # loading imports it anyway

# The decoder times forwards at start-up to size its draft trees (seconds, imports nothing): use
# the prior table instead, as calibrate_cost=False would.
decoder.measure = lambda backbone, max_len, **kwargs: decoder.DecoderConfig().draft.cost

async def main():
    backbone = build_tiny(AutoTokenizer.from_pretrained(sys.argv[2]), layers=2)
    # The builder lives in lodestar.bench (tests and chaos suite share it): forget it was imported,
    # so that the server importing it (or anything under bench) still shows below.
    for name in [m for m in sys.modules if m == "lodestar.bench" or m.startswith("lodestar.bench.")]:
        del sys.modules[name]
    server, _ = await create_server(Settings(port=0, data_dir=sys.argv[3], only=SERVICES), backbone=backbone)
    await server.start()
    runtime = runtime_of(server)
    await runtime.loaded.wait()
    try:
        for engine in (runtime.embed_engine, runtime.retrieve_engine, runtime.job_manager,
                       runtime.compress_engine, runtime.generate_engine, runtime.answer_pipeline):
            engine()  # raises Unavailable when the load failed
        return sorted(runtime.serves)
    finally:
        await shutdown(server, 0)

serves = asyncio.run(main())
print(json.dumps({"serves": serves, "modules": sorted(sys.modules)}))
"""


def test_a_loaded_server_imports_no_train_eval_bench(tmp_path: Path, bundled_folder: Path) -> None:
    from lodestar.services.settings import SERVICES

    out = subprocess.run(
        [sys.executable, "-c", SERVE, str(TESTS), str(bundled_folder), str(tmp_path / "data")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["serves"] == sorted(SERVICES)
    loaded = [name for name in report["modules"] if name.split(".")[0] == "lodestar"]
    assert "lodestar.services.server" in loaded
    assert not [name for name in loaded if off_serving(name)]

    # What the loaded server could import later (a lazy import in a request handler, say).
    via: dict[str, str] = {}
    seen, todo = set(loaded), list(loaded)
    while todo:
        module = todo.pop()
        for name in imported_by(module) - seen:
            seen.add(name)
            via[name] = module
            todo.append(name)
    chains = []
    for name in sorted(n for n in seen if off_serving(n)):
        chain = [name]
        while chain[-1] in via:
            chain.append(via[chain[-1]])
        chains.append(" <- ".join(chain))
    assert not chains, "serving code imports train/eval/bench code:\n" + "\n".join(chains)
