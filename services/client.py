"""Python client: `from lodestar import Client`.

    with Client("127.0.0.1:50051") as c:
        vecs = c.embed(["hello", "world"], mode="prompteol").vectors   # (2, 576) float32
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services import convert


class ClientError(Exception):
    """A call failed; `code` is the gRPC status name (e.g. INVALID_ARGUMENT), `message` the server's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _raise(exc: grpc.RpcError) -> ClientError:
    return ClientError(exc.code().name, exc.details() or "")  # type: ignore[attr-defined]


class Client:
    def __init__(self, address: str = "127.0.0.1:50051", timeout: float | None = 60.0, max_message_bytes: int = 64 << 20) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._embed = pb_grpc.EmbedServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._retrieve = rpb_grpc.RetrieveServiceStub(self._channel)

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: list[str], *, timeout: float | None = None, **options: Any) -> EmbedResult:
        """Embed texts. Options: mode, prompt, instruction, adapter, dimensions, normalize, dtype
        (float32|float16|int8|binary), truncate, max_tokens, start_layer/end_layer/output_layer."""
        req = convert.embed_request(list(texts), EmbedOptions(**options))
        try:
            resp = self._embed.Embed(req, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return convert.embed_result(resp)

    def embed_stream(
        self, batches: Iterable[list[str]], *, timeout: float | None = None, **options: Any
    ) -> Iterator[EmbedResult]:
        """Stream many batches over one call; results come back in batch order."""
        opts = EmbedOptions(**options)
        reqs = (convert.embed_request(list(b), opts, request_id=str(i)) for i, b in enumerate(batches))
        try:
            for resp in self._embed.EmbedStream(reqs, timeout=timeout):
                yield convert.embed_result(resp)
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    def info(self) -> dict[str, Any]:
        try:
            return convert.info_dict(self._embed.Info(pb.InfoRequest(), timeout=self.timeout))
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    # --- retrieval ----------------------------------------------------------------------------

    def create_collection(self, name: str, **config: Any) -> dict[str, Any]:
        """Config keys: mode, query_prompt, query_instruction, doc_prompt, doc_instruction, adapter,
        dimensions, metric (cosine|ip|l2), index (FAISS factory string), sparse (none|bm25),
        chunk_tokens, chunk_overlap."""
        req = rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name=name, **config))
        return convert.stats_dict(self._call(self._retrieve.CreateCollection, req))

    def drop_collection(self, name: str) -> None:
        self._call(self._retrieve.DropCollection, rpb.DropCollectionRequest(name=name))

    def list_collections(self) -> list[dict[str, Any]]:
        resp = self._call(self._retrieve.ListCollections, rpb.ListCollectionsRequest())
        return [convert.stats_dict(s) for s in resp.collections]

    def upsert(self, collection: str, documents: Iterable[dict[str, Any] | rt.Document], timeout: float | None = None) -> tuple[int, int]:
        """Insert or replace documents ({"id", "text", "metadata"}); returns (documents, chunks)."""
        docs = [d if isinstance(d, rt.Document) else rt.Document(d["id"], d["text"], d.get("metadata") or {}) for d in documents]
        req = rpb.UpsertRequest(collection=collection, documents=[convert.document_pb(d) for d in docs])
        resp = self._call(self._retrieve.Upsert, req, timeout)
        return resp.documents, resp.chunks

    def delete(self, collection: str, ids: list[str]) -> int:
        return self._call(self._retrieve.Delete, rpb.DeleteRequest(collection=collection, ids=ids)).deleted

    def get(self, collection: str, ids: list[str]) -> list[rt.Document | None]:
        resp = self._call(self._retrieve.Get, rpb.GetRequest(collection=collection, ids=ids))
        return [
            rt.Document(d.id, d.text, json.loads(d.metadata_json or "{}")) if found else None
            for d, found in zip(resp.documents, resp.found)
        ]

    def search(
        self,
        collection: str,
        queries: str | list[str],
        *,
        k: int = 10,
        retriever: str = "dense",
        fusion: str = "rrf",
        alpha: float | None = None,
        rrf_k: int | None = None,
        filters: Iterable[tuple[str, str, Any] | dict[str, Any]] = (),
        include_text: bool = True,
        timeout: float | None = None,
    ) -> list[list[rt.Hit]]:
        """Search one query (str) or a batch; filters are (field, op, value) with op in
        eq ne in nin gt gte lt lte, AND-ed and applied before ranking."""
        qs = [queries] if isinstance(queries, str) else list(queries)
        fs = []
        for f in filters:
            field, op, value = (f["field"], f["op"], f["value"]) if isinstance(f, dict) else f
            fs.append(rpb.Filter(field=field, op=op, value_json=json.dumps(value)))
        req = rpb.SearchRequest(
            collection=collection, queries=qs, k=k, retriever=retriever, fusion=fusion, alpha=alpha,
            rrf_k=rrf_k, filters=fs, include_text=include_text,
        )
        return convert.hits(self._call(self._retrieve.Search, req, timeout))

    def snapshot(self, collection: str) -> dict[str, Any]:
        return json.loads(self._call(self._retrieve.Snapshot, rpb.SnapshotRequest(collection=collection)).manifest_json)

    def restore(self, collection: str, path: str) -> dict[str, Any]:
        return convert.stats_dict(self._call(self._retrieve.Restore, rpb.RestoreRequest(collection=collection, path=path)))

    def rebuild(self, collection: str) -> dict[str, Any]:
        return convert.stats_dict(self._call(self._retrieve.Rebuild, rpb.RebuildRequest(collection=collection), None))

    def stats(self, collection: str) -> dict[str, Any]:
        return convert.stats_dict(self._call(self._retrieve.Stats, rpb.StatsRequest(collection=collection)))

    # --- health -------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN, or UNAVAILABLE when nothing answers."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server reports SERVING (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while (status := self.health()) != "SERVING":
            if time.monotonic() > deadline:
                raise ClientError("DEADLINE_EXCEEDED", f"{self.address} not SERVING after {timeout:.0f}s (last: {status})")
            time.sleep(0.2)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
