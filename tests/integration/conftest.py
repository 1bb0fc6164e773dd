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
def server(backbone: Backbone) -> Iterator[BackgroundServer]:
    """The real bundled model behind a real gRPC server on a free port."""
    srv = BackgroundServer(Settings(port=0, grace_period_s=5), backbone=backbone).start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[Client]:
    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def tiny_server(tiny_backbone: Backbone) -> Iterator[Any]:
    """Factory: a tiny-model server with the given settings; stopped after the test."""
    started: list[BackgroundServer] = []

    def make(wait_loaded: bool = True, **settings: Any) -> BackgroundServer:
        srv = BackgroundServer(Settings(port=0, **settings), backbone=tiny_backbone).start(wait_loaded=wait_loaded)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(grace=0)
