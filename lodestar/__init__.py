"""Lodestar: decoder-LLM embeddings, retrieval, compression and generation over gRPC.

The root package re-exports the Python client; it is imported lazily so that engines importing
`lodestar.errors` never pull in gRPC.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any


def _drop_checkout_root() -> None:
    """Take the source checkout's root off sys.path (where `python -m`/`-c` started in it puts it).

    The root holds the subpackages as top-level folders (the install maps them under `lodestar.`), and
    its `kernels/` would shadow the PyPI `kernels` package that transformers imports. Only a checkout
    is touched: an installed lodestar's parent is site-packages, which has no pyproject.toml.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not (os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "kernels"))):
        return
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]


_drop_checkout_root()

__version__ = "0.1.0"
_CLIENT = ("AsyncClient", "Client", "ClientError")
__all__ = [*_CLIENT, "__version__"]

if TYPE_CHECKING:
    from lodestar.services.client import AsyncClient as AsyncClient
    from lodestar.services.client import Client as Client
    from lodestar.services.client import ClientError as ClientError


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        from lodestar.services import client

        return getattr(client, name)
    raise AttributeError(f"module 'lodestar' has no attribute {name!r}")
