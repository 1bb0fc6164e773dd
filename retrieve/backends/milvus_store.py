"""Talking to Milvus: the client (connected on first use), Milvus's errors as Lodestar's, and the
collection configs, kept in Milvus itself (collection `lodestar_collections`) so every replica
pointed at the same Milvus sees the same collections.

Error mapping (the interceptor turns these into statuses): Milvus unreachable or timing out ->
Unavailable; its rate limits, quotas and memory -> Overloaded; a collection gone (dropped through
another replica) -> NotFound; any other refusal (its own limits, a bad parameter) -> InvalidInput
with Milvus's message. Nothing from Milvus reaches the client as INTERNAL.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from lodestar.errors import InvalidInput, NotFound, Overloaded, Unavailable
from lodestar.retrieve.backends.milvus_filters import string_literal
from lodestar.retrieve.types import CollectionConfig

log = logging.getLogger(__name__)

CONFIGS = "lodestar_collections"  # name -> config, vector width, model, the chunk collection
MAX_VARCHAR = 65535  # Milvus's VARCHAR limit in bytes
MAX_TOPK = 16384  # Milvus's largest search limit
QUERY_LIMIT = 16384  # rows one query may return
# Milvus's codes (common.proto ErrorCode and the 2.x `code`) for load it sheds: rate limit, force
# deny, insufficient memory to load, memory quota, disk quota.
_OVERLOAD_CODES = {8, 9, 48, 49, 52, 53, 54}
_OVERLOAD_WORDS = ("rate limit", "quota", "memory", "too many", "exhausted")
_UNAVAILABLE_WORDS = ("fail connecting", "unavailable", "deadline", "timeout", "timed out", "connection refused")
_NOT_FOUND_WORDS = (
    "collection not found",
    "can't find collection",
    "collection not exist",
    "collection does not exist",
)


@dataclass(frozen=True)
class MilvusOptions:
    """How to reach Milvus (LODESTAR_MILVUS_*): a Milvus Lite path (`./milvus.db`) or a server URI."""

    uri: str
    token: str = ""  # "user:password" or an API key
    db_name: str = ""  # "" = Milvus's default database
    timeout_s: float = 30.0  # per call
    tls_ca_file: str = ""  # https: the CA that signed Milvus's certificate
    tls_cert_file: str = ""  # mTLS: this server's client certificate and key
    tls_key_file: str = ""
    tls_server_name: str = ""  # the name on Milvus's certificate, when it differs from the URI's host

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"uri": self.uri, "token": self.token, "db_name": self.db_name, "timeout": self.timeout_s}
        if self.tls_ca_file and self.tls_cert_file:
            kw |= {"secure": True, "ca_pem_path": self.tls_ca_file}
            kw |= {"client_pem_path": self.tls_cert_file, "client_key_path": self.tls_key_file}
        elif self.tls_ca_file:
            kw |= {"secure": True, "server_pem_path": self.tls_ca_file}
        if self.tls_server_name:
            kw["server_name"] = self.tls_server_name
        return kw


def mapped(exc: Exception, what: str) -> Exception:
    """Lodestar's error for an exception out of pymilvus (MilvusException, or a raw gRPC error)."""
    message = str(getattr(exc, "message", "") or exc).strip() or type(exc).__name__
    low = message.lower()
    code = getattr(exc, "code", None)
    if callable(code):  # a gRPC error pymilvus let through: code() is a grpc.StatusCode
        status = getattr(code(), "name", "")
        if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return Unavailable(f"Milvus is unreachable ({what}): {message}")
        if status == "RESOURCE_EXHAUSTED":
            return Overloaded(f"Milvus is over capacity ({what}): {message}")
        return InvalidInput(f"Milvus refused {what}: {message}")
    codes = {code, getattr(exc, "compatible_code", None)}
    name = type(exc).__name__
    if name in ("ConnectError", "MilvusUnavailableException") or any(w in low for w in _UNAVAILABLE_WORDS):
        return Unavailable(
            f"Milvus is unreachable ({what}): {message}; check LODESTAR_MILVUS_URI and that Milvus is up"
        )
    if codes & _OVERLOAD_CODES or any(w in low for w in _OVERLOAD_WORDS):
        return Overloaded(f"Milvus is over capacity ({what}): {message}")
    if name == "CollectionNotExistException" or 100 in codes or any(w in low for w in _NOT_FOUND_WORDS):
        return NotFound(f"Milvus has no such collection ({what}): {message}")
    return InvalidInput(f"Milvus refused {what}: {message}")


@contextmanager
def milvus_errors(what: str) -> Iterator[None]:
    """Run a Milvus call; its failure becomes a Lodestar error (see `mapped`)."""
    try:
        yield
    except (InvalidInput, NotFound, Overloaded, Unavailable):
        raise
    except Exception as e:  # pymilvus raises MilvusException and, rarely, grpc errors
        if type(e).__module__.startswith(("pymilvus", "grpc", "milvus_lite")) or hasattr(e, "code"):
            raise mapped(e, what) from e
        if isinstance(e, (ConnectionError, TimeoutError)):
            raise Unavailable(f"Milvus is unreachable ({what}): {e}") from e
        raise


class Milvus:
    """One pymilvus client for the process (thread-safe), connected on first use."""

    def __init__(self, options: MilvusOptions) -> None:
        self.options = options
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError as e:  # the optional extra is missing
                    raise Unavailable(
                        "backend milvus needs pymilvus: pip install 'lodestar[milvus]' on the server"
                    ) from e
                with milvus_errors(f"connecting to {self.options.uri}"):
                    self._client = MilvusClient(**self.options.client_kwargs())
            return self._client

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """client.<method>(*args, **kwargs) with the configured timeout; errors mapped."""
        client = self.client
        with milvus_errors(what):
            return getattr(client, method)(*args, timeout=self.options.timeout_s, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a client whose server is gone
                    log.debug("closing the Milvus client failed", exc_info=True)
                self._client = None


@dataclass(frozen=True)
class Record:
    """What a replica needs to serve a Milvus collection: its config, width, model and chunk collection."""

    config: CollectionConfig
    dim: int
    model: str
    physical: str  # the Milvus collection holding its chunks (a fresh name per create)


class ConfigStore:
    """The collection configs in Milvus (one row per collection), created on first use."""

    def __init__(self, milvus: Milvus) -> None:
        self.milvus = milvus
        self._ready = False
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        with self._lock:
            if self._ready:
                return
            if not self.milvus.call("listing collections", "has_collection", CONFIGS):
                from pymilvus import DataType

                schema = self.milvus.client.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=256)
                schema.add_field("record", DataType.VARCHAR, max_length=MAX_VARCHAR)
                schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
                index = self.milvus.client.prepare_index_params()
                index.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
                self.milvus.call(
                    "creating the config collection",
                    "create_collection",
                    CONFIGS,
                    schema=schema,
                    index_params=index,
                    consistency_level="Strong",
                )
            self.milvus.call("loading the config collection", "load_collection", CONFIGS)
            self._ready = True

    def get(self, name: str) -> Record | None:
        self._ensure()
        rows = self.milvus.call(
            f"reading the config of {name!r}",
            "query",
            CONFIGS,
            filter=f"name == {string_literal(name)}",
            output_fields=["record"],
            limit=1,
            consistency_level="Strong",
        )
        return _record(rows[0]["record"]) if rows else None

    def all(self) -> list[Record]:
        self._ensure()
        rows = self.milvus.call(
            "listing collections",
            "query",
            CONFIGS,
            filter='name != ""',
            output_fields=["record"],
            limit=QUERY_LIMIT,
            consistency_level="Strong",
        )
        return sorted((_record(r["record"]) for r in rows), key=lambda r: r.config.name)

    def put(self, record: Record) -> None:
        self._ensure()
        text = json.dumps(
            {"config": asdict(record.config), "dim": record.dim, "model": record.model, "physical": record.physical}
        )
        if len(text.encode("utf-8")) > MAX_VARCHAR:
            raise InvalidInput(
                f"the collection's config is {len(text)} bytes as JSON; Milvus holds at most {MAX_VARCHAR}"
            )
        row = {"name": record.config.name, "record": text, "unused": [0.0, 0.0]}
        self.milvus.call(f"storing the config of {record.config.name!r}", "insert", CONFIGS, [row])

    def delete(self, name: str) -> None:
        self._ensure()
        self.milvus.call(
            f"deleting the config of {name!r}", "delete", CONFIGS, filter=f"name == {string_literal(name)}"
        )


def _record(text: str) -> Record:
    data = json.loads(text)
    return Record(CollectionConfig(**data["config"]), int(data["dim"]), str(data["model"]), str(data["physical"]))
