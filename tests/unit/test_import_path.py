"""Importing lodestar from a source checkout's root keeps the root's folders from shadowing PyPI packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lodestar

ROOT = Path(lodestar.__file__).resolve().parent.parent


def test_python_c_in_checkout_root_imports_transformers() -> None:
    # `python -c` (like `python -m`) puts the current folder first on sys.path; the root's kernels/
    # folder would then stand in for the PyPI `kernels` package that transformers imports.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    code = (
        "import sys, importlib.util, lodestar, transformers.activations; "
        "assert not any(p in ('', sys.argv[1]) for p in sys.path), sys.path; "
        "spec = importlib.util.find_spec('kernels'); print(spec.origin if spec else '')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert not out.stdout.strip().startswith(str(ROOT / "kernels")), out.stdout
