"""Real servers on loopback: one with the bundled model for the session, tiny ones per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lodestar.backbone import Backbone
from lodestar.services.client import Client
from lodestar.services.server import BackgroundServer
from lodestar.services.settings import Settings


@pytest.fixture(scope="session")
def server(backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """The real bundled model behind a real gRPC server on a free port (collections in a temp dir)."""
    data = tmp_path_factory.mktemp("lodestar-data")
    srv = BackgroundServer(Settings(port=0, grace_period_s=5, data_dir=data), backbone=backbone).start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[Client]:
    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def tiny_server(tiny_backbone: Backbone, tmp_path: Any) -> Iterator[Any]:
    """Factory: a tiny-model server with the given settings; stopped after the test."""
    started: list[BackgroundServer] = []

    def make(wait_loaded: bool = True, **settings: Any) -> BackgroundServer:
        settings.setdefault("data_dir", tmp_path / f"data{len(started)}")
        srv = BackgroundServer(Settings(port=0, **settings), backbone=tiny_backbone).start(wait_loaded=wait_loaded)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(grace=0)
