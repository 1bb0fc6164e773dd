"""Health transitions, graceful shutdown with a request in flight, and the `lodestar serve` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lodestar.backbone import Backbone
from lodestar.services.client import Client, ClientError
from lodestar.services.runtime import Runtime
from lodestar.services.server import BackgroundServer
from lodestar.services.settings import Settings

pytestmark = pytest.mark.slow


def test_health_not_serving_until_loaded_then_serving_then_not_serving_on_shutdown(
    tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    release = threading.Event()
    original = Runtime._build_engine

    def slow_build(self, backbone):  # type: ignore[no-untyped-def]
        release.wait(30)
        return original(self, backbone)

    monkeypatch.setattr(Runtime, "_build_engine", slow_build)
    srv = BackgroundServer(Settings(port=0, data_dir=tmp_path), backbone=tiny_backbone).start(wait_loaded=False)
    try:
        with Client(srv.address) as c:
            assert c.health() == "NOT_SERVING"
            assert c.health("lodestar.embed.v1.EmbedService") == "NOT_SERVING"
            with pytest.raises(ClientError) as err:
                c.embed(["x"])
            assert err.value.code == "UNAVAILABLE" and "still loading" in err.value.message
            release.set()
            c.wait_ready(timeout=30)
            assert c.health("lodestar.embed.v1.EmbedService") == "SERVING"
            assert c.embed(["x"]).vectors.shape == (1, 64)
            srv._call(srv.runtime.begin_shutdown())
            assert c.health() == "NOT_SERVING"
    finally:
        srv.stop(grace=0)


def test_graceful_shutdown_finishes_the_request_in_flight(tiny_server) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server(grace_period_s=10)
    engine = srv.runtime.embed_engine()
    started = threading.Event()
    original = engine._run

    def slow(spec, batch):  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(1.0)
        return original(spec, batch)

    engine._run = slow
    result: dict = {}
    with Client(srv.address) as c:
        t = threading.Thread(target=lambda: result.setdefault("r", c.embed(["in flight"])))
        t.start()
        assert started.wait(10)
        srv.stop()  # graceful: waits for the request
        t.join(10)
    assert result["r"].vectors.shape == (1, 64)
    with Client(srv.address) as c:
        assert c.health() == "UNAVAILABLE"  # nothing listens any more


def test_bad_model_path_fails_clearly(tmp_path: Path) -> None:
    from lodestar.backbone import BackboneConfig, load_backbone
    from lodestar.errors import InvalidInput

    with pytest.raises(InvalidInput, match="does not exist"):
        load_backbone(BackboneConfig(model=str(tmp_path / "missing")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_drains_on_sigterm(tmp_path: Path, tiny_backbone: Backbone) -> None:
    """`lodestar serve` as a real process: SERVING, then SIGTERM mid-request: the request completes
    and the process exits 0."""
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    port = _free_port()
    env = {
        **os.environ,
        "LODESTAR_MODEL": str(folder),
        "LODESTAR_DATA_DIR": str(tmp_path / "data"),
        "LODESTAR_DTYPE": "float32",
        "LODESTAR_GRACE_PERIOD_S": "60",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lodestar.services.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            c.wait_ready(timeout=120)
            big = ["a long text to keep the tiny model busy " * 12] * 256
            result: dict = {}
            t = threading.Thread(target=lambda: result.setdefault("r", c.embed(big)))
            t.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            t.join(120)
            assert result["r"].vectors.shape == (256, 64)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
    assert "listening on" in out


def test_every_service_reports_health_and_reflection_lists_them(tiny_server) -> None:  # type: ignore[no-untyped-def]
    from lodestar.services.settings import SERVICES

    srv = tiny_server()
    names = [
        "lodestar.embed.v1.EmbedService",
        "lodestar.retrieve.v1.RetrieveService",
        "lodestar.index.v1.IndexService",
        "lodestar.compress.v1.CompressService",
        "lodestar.generate.v1.GenerateService",
    ]
    assert len(names) == len(SERVICES)
    with Client(srv.address) as c:
        assert [c.health(n) for n in names] == ["SERVING"] * len(names)
    assert sorted(srv.runtime.service_names) == sorted(names)
