"""Deployment files stay true to the code: every LODESTAR_* variable they set is a declared
setting, every service they name exists, and the image copies every package folder."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from lodestar.services.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "protos"))
import generate as protogen  # noqa: E402

# LODESTAR_MILVUS_URI: the chart sets it for the Milvus engine (issue 30), whose branch declares it.
FIELDS = {f"LODESTAR_{name.upper()}" for name in Settings.model_fields} | {"LODESTAR_MILVUS_URI"}
VAR = re.compile(r"\bLODESTAR_[A-Z0-9_]+\b")


def test_every_variable_set_anywhere_is_a_setting() -> None:
    files = [
        ROOT / "Dockerfile",
        ROOT / "docker-compose.yml",
        *sorted((ROOT / "charts").rglob("*.y*ml")),
        *sorted((ROOT / "charts").rglob("*.tpl")),
    ]
    for path in files:
        unknown = set(VAR.findall(path.read_text())) - FIELDS
        assert not unknown, (
            f"{path.relative_to(ROOT)} sets {sorted(unknown)}, which services/settings.py does not declare"
        )


def test_compose_services_and_chart_values() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"redis", "server", "worker"}
    assert compose["services"]["worker"]["command"] == ["worker"]
    values = yaml.safe_load((ROOT / "charts/lodestar/values.yaml").read_text())
    assert set(values["server"]["services"].split(",")) <= set(SERVICES)
    for role in ("server", "embed", "worker"):
        assert set(values[role]["env"]) <= FIELDS
    chart = yaml.safe_load((ROOT / "charts/lodestar/Chart.yaml").read_text())
    assert chart["name"] == "lodestar" and chart["apiVersion"] == "v2"


def test_image_copies_every_package_folder() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.M))
    folders = set(protogen.PACKAGE_DIRS.values())
    assert folders <= copied, f"the Dockerfile misses {sorted(folders - copied)}"
