#!/usr/bin/env python3
"""Type-check the `lodestar` packages (`make lint`).

The root folders install as `lodestar.<folder>` (setup.py maps them); mypy resolves modules from
paths, so this links them into `build/typecheck/lodestar/` as the wheel lays them out and checks
that tree with the settings in pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "protos"))
from generate import PACKAGE_DIRS  # noqa: E402  (protos/generate.py)

TREE = ROOT / "build" / "typecheck"


def link_tree() -> Path:
    """build/typecheck/lodestar/<subpackage> -> the root folders; the root package's own modules beside them."""
    shutil.rmtree(TREE, ignore_errors=True)
    pkg = TREE / "lodestar"
    pkg.mkdir(parents=True)
    for module in (ROOT / PACKAGE_DIRS["lodestar"]).glob("*.py"):
        (pkg / module.name).symlink_to(module)
    for package, folder in PACKAGE_DIRS.items():
        if package != "lodestar":
            (pkg / package.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return TREE


def main() -> int:
    tree = link_tree()
    # the cache lives beside the linked tree (which is rebuilt each run): a rerun checks only what changed
    cache = ROOT / "build" / "mypy_cache"
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache)]
    cmd += ["-p", "lodestar"]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
