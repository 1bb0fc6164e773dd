"""docs/configuration.md is generated from services/settings.py and stays in sync with it."""

from __future__ import annotations

from pathlib import Path

from lodestar.services.cli.config_cmds import groups, markdown
from lodestar.services.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented_in_a_section() -> None:
    listed = [name for _, names in groups() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields), "a setting outside a `# --- section ---` of settings.py"
    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert not missing, f"settings without a description: {missing}"


def test_the_page_is_current() -> None:
    assert DOC.read_text() == markdown(), "regenerate it: lodestar config docs > docs/configuration.md"
