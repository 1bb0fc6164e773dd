"""Lodestar: decoder-LLM embeddings, retrieval, compression and generation over gRPC.

The root package re-exports the Python client; it is imported lazily so that engines importing
`lodestar.errors` never pull in gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "ClientError", "__version__"]

if TYPE_CHECKING:
    from lodestar.services.client import Client, ClientError


def __getattr__(name: str) -> Any:
    if name in ("Client", "ClientError"):
        from lodestar.services import client

        return getattr(client, name)
    raise AttributeError(f"module 'lodestar' has no attribute {name!r}")
