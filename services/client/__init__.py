"""The Python client: `Client` (blocking) and `AsyncClient` (asyncio), with the same methods.

Per service, one module converts Python values to requests and responses to results (the mirror of
the server's `lodestar.services.<service>`); `calls` writes every method once for both clients.
"""

from __future__ import annotations

from lodestar.services.client.aio import AsyncClient
from lodestar.services.client.channel import ChannelConfig
from lodestar.services.client.sync import Client
from lodestar.services.client.types import (
    AnswerContext,
    Chunk,
    ClientError,
    CollectionInfo,
    CompressInfo,
    Datastore,
    Generated,
    GenerationStats,
    Job,
    JobError,
    ModeInfo,
    ServerInfo,
)

__all__ = [
    "AnswerContext",
    "AsyncClient",
    "ChannelConfig",
    "Chunk",
    "Client",
    "ClientError",
    "CollectionInfo",
    "CompressInfo",
    "Datastore",
    "Generated",
    "GenerationStats",
    "Job",
    "JobError",
    "ModeInfo",
    "ServerInfo",
]
