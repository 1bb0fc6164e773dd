"""Build glue: map root folders to `lodestar.*` and generate gRPC code from protos/ when building."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "protos"))
import generate as protogen  # noqa: E402  (protos/generate.py)


def packages() -> tuple[list[str], dict[str, str]]:
    """Every package under each mapped folder, plus the generated `lodestar.<svc>.v1` packages."""
    pkg_dirs = dict(protogen.PACKAGE_DIRS)
    found: list[str] = []
    for package, folder in protogen.PACKAGE_DIRS.items():
        base = ROOT / folder
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                rel = Path(dirpath).relative_to(base)
                found.append(".".join([package, *rel.parts]) if rel.parts else package)
    found.extend(protogen.generated_packages())
    return sorted(set(found)), pkg_dirs


# Generated before setup() lists the packages: metadata, editable and wheel builds all need
# the `lodestar.<svc>.v1` folders to exist (grpcio-tools is a build requirement).
protogen.generate()
PACKAGES, PACKAGE_DIR = packages()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
