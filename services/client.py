"""Python client: `from lodestar import Client`.

    with Client("127.0.0.1:50051") as c:
        vecs = c.embed(["hello", "world"], mode="prompteol").vectors   # (2, 576) float32
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.compress_ctx.types import CompressResult
from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.compress_ctx.v1 import compress_pb2_grpc as cpb_grpc
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.embed.v1 import embed_pb2_grpc as pb_grpc
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.generate.v1 import generate_pb2_grpc as gpb_grpc
from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import index_pb2 as ipb
from lodestar.retrieve.v1 import index_pb2_grpc as ipb_grpc
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


@dataclass
class Chunk:
    """One streamed piece of a generation; the last has finish_reason (length|eos|stop|cancelled) and stats."""

    text: str
    token_ids: list[int]
    finish_reason: str = ""
    stats: dict[str, Any] | None = None


@dataclass
class AnswerContext:
    """First message of an Answer stream: what was retrieved and what the model reads."""

    sources: list[rt.Hit]
    context: str  # "" = closed-book (nothing retrieved, or selective augmentation skipped it)
    decision: str  # augment | skip
    context_tokens: int
    passage_tokens: int


@dataclass
class Generated:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: dict[str, Any]
    context: AnswerContext | None = None  # Answer only
    chunks: int = 0  # streamed messages


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
        self._compress = cpb_grpc.CompressServiceStub(self._channel)
        self._generate = gpb_grpc.GenerateServiceStub(self._channel)
        self._index = ipb_grpc.IndexServiceStub(self._channel)

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: list[str], *, timeout: float | None = None, **options: Any) -> EmbedResult:
        """Embed texts. Options: mode, prompt, instruction, adapter, dimensions, normalize, dtype
        (float32|float16|int8|binary), truncate, max_tokens, start_layer/end_layer/output_layer;
        learned sparse: sparse=True (result.sparse: per text token ids and weights, by weight),
        sparse_top_k, sparse_threshold, with_dense (False: sparse vectors only)."""
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
        dimensions, metric (cosine|ip|l2), index (FAISS factory string), shards (1..64: dense index
        shards searched in parallel), sparse (none|bm25|learned), chunk_tokens, chunk_overlap; for
        learned sparse also sparse_mode, sparse_adapter, sparse_top_k, query_top_k, query_idf."""
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
        feedback_chunks: int = 0,
        feedback_weight: float | None = None,
        length_norm: float | None = None,
        timeout: float | None = None,
    ) -> list[list[rt.Hit]]:
        """Search one query (str) or a batch; filters are (field, op, value) with op in
        eq ne in nin gt gte lt lte, AND-ed and applied before ranking. feedback_chunks (learned sparse):
        add the mean of the first ranking's top chunks to each query (pseudo-relevance feedback);
        length_norm (learned sparse): BM25's b for chunk length (0..1)."""
        qs = [queries] if isinstance(queries, str) else list(queries)
        fs = _filters_pb(filters)
        req = rpb.SearchRequest(
            collection=collection, queries=qs, k=k, retriever=retriever, fusion=fusion, alpha=alpha,
            rrf_k=rrf_k, filters=fs, include_text=include_text, feedback_chunks=feedback_chunks or None,
            feedback_weight=feedback_weight, length_norm=length_norm,
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

    # --- compression --------------------------------------------------------------------------

    def compress(self, query: str, passages: list[str], *, timeout: float | None = None, **options: Any) -> CompressResult:
        """Compress passages for a query. Options: method (extractive|abstractive), budget_tokens,
        budget_ratio, top_n, order (original|score), selective, threshold, max_new_tokens,
        sentence_options / query_options ({mode, prompt, instruction, adapter}), adapter (abstractive)."""
        req = convert.compress_request(query, list(passages), **options)
        return convert.compress_result(self._call(self._compress.Compress, req, timeout))

    def compress_info(self) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(self._call(self._compress.Info, cpb.CompressInfoRequest()), preserving_proto_field_name=True)

    # --- generation ---------------------------------------------------------------------------

    def _stream(self, method: Any, request: Any, timeout: float | None) -> Iterator[Any]:
        """Iterate a server stream; leaving the loop early cancels the call (the server stops)."""
        call = method(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        finally:
            call.cancel()

    @staticmethod
    def _chunk(text: str, token_ids: Iterable[int], finish_reason: str, stats: Any) -> Chunk:
        return Chunk(text, list(token_ids), finish_reason, convert.stats_from_pb(stats) if finish_reason else None)

    def generate_stream(
        self, prompt: str | list[int], *, passages: list[str] | None = None, chat: bool = False,
        timeout: float | None = None, **decoding: Any,
    ) -> Iterator[Chunk]:
        """Stream a continuation. Decoding options: max_new_tokens, stop, temperature, top_p, seed,
        speculative, datastore, self_draft_layers. `passages` feed the drafts only (they are not put in the
        prompt)."""
        req = gpb.GenerateRequest(
            prompt=prompt if isinstance(prompt, str) else "", prompt_token_ids=[] if isinstance(prompt, str) else prompt,
            options=convert.decoding_options(**decoding), passages=passages or [], chat=chat,
        )
        for c in self._stream(self._generate.Generate, req, timeout):
            yield self._chunk(c.text, c.token_ids, c.finish_reason, c.stats)

    def generate(self, prompt: str | list[int], **kwargs: Any) -> Generated:
        """Run a generation to the end (same arguments as generate_stream)."""
        return _collect(self.generate_stream(prompt, **kwargs))

    def answer_stream(
        self, question: str, collection: str, *, k: int | None = None, retriever: str = "",
        filters: Iterable[tuple[str, str, Any] | dict[str, Any]] = (), compression: str = "",
        budget_tokens: int | None = None, selective: bool = False, fusion: str = "", alpha: float | None = None,
        rrf_k: int | None = None, threshold: float | None = None, feedback_chunks: int = 0,
        feedback_weight: float | None = None, length_norm: float | None = None, timeout: float | None = None,
        **decoding: Any,
    ) -> Iterator[AnswerContext | Chunk]:
        """Retrieve -> compress -> generate; the first item is the AnswerContext, then text Chunks.
        fusion/alpha/rrf_k/feedback_chunks/feedback_weight/length_norm steer retrieval as in search (default weighted, alpha 0.15);
        threshold is the selective cut (default: the compressor's calibrated one)."""
        req = gpb.AnswerRequest(
            question=question, collection=collection, k=k, retriever=retriever, filters=_filters_pb(filters),
            compression=compression, budget_tokens=budget_tokens, selective=selective,
            options=convert.decoding_options(**decoding), fusion=fusion, alpha=alpha, rrf_k=rrf_k, threshold=threshold,
            feedback_chunks=feedback_chunks or None, feedback_weight=feedback_weight, length_norm=length_norm,
        )
        first = True
        for c in self._stream(self._generate.Answer, req, timeout):
            if first:
                first = False
                hits = convert.hits(rpb.SearchResponse(results=[rpb.QueryResult(hits=[
                    rpb.Hit(id=s.id, score=s.score, chunk=s.chunk, text=s.text, chunk_text=s.text, metadata_json=s.metadata_json)
                    for s in c.sources
                ])]))[0]
                yield AnswerContext(hits, c.context, c.decision, c.context_tokens, c.passage_tokens)
            if c.text or c.finish_reason:
                yield self._chunk(c.text, (), c.finish_reason, c.stats)

    def answer(self, question: str, collection: str, **kwargs: Any) -> Generated:
        """Run Answer to the end (same arguments as answer_stream)."""
        items = iter(self.answer_stream(question, collection, **kwargs))
        context = next(items)
        assert isinstance(context, AnswerContext)
        out = _collect(items)  # type: ignore[arg-type]
        out.context = context
        return out

    def list_datastores(self) -> list[dict[str, Any]]:
        resp = self._call(self._generate.ListDatastores, gpb.ListDatastoresRequest())
        return [convert.datastore_dict(d) for d in resp.datastores]

    def add_to_datastore(self, name: str, texts: Iterable[str], *, batch: int = 256, compact: bool = False,
                         timeout: float | None = None) -> dict[str, Any]:
        """Create datastore `name` on the server or append `texts` to it (streamed in batches)."""
        def requests() -> Iterator[gpb.AddToDatastoreRequest]:
            buf: list[str] = []
            sent = False
            for t in texts:
                buf.append(t)
                if len(buf) >= batch:
                    yield gpb.AddToDatastoreRequest(name=name, texts=buf, compact=compact)
                    buf, sent = [], True
            if buf or not sent:
                yield gpb.AddToDatastoreRequest(name=name, texts=buf, compact=compact)

        try:
            resp = self._generate.AddToDatastore(requests(), timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return convert.datastore_dict(resp)

    # --- batch indexing jobs ---------------------------------------------------------------

    def submit_job(self, collection: str, lines: Iterable[tuple[int, bytes]], *, source: str = "",
                   chunk_docs: int = 0, batch: int = 256, timeout: float | None = None) -> dict[str, Any]:
        """Upload (line number, raw jsonl line) pairs as one job; it starts when the upload ends.
        Lines the server cannot use are listed in the job's errors, with their numbers."""
        def requests() -> Iterator[ipb.SubmitJobRequest]:
            yield ipb.SubmitJobRequest(collection=collection, source=source, chunk_docs=chunk_docs)
            buf: list[ipb.Line] = []
            for number, data in lines:
                buf.append(ipb.Line(number=number, data=data))
                if len(buf) >= batch:
                    yield ipb.SubmitJobRequest(lines=buf)
                    buf = []
            if buf:
                yield ipb.SubmitJobRequest(lines=buf)

        try:
            return convert.job_dict(self._index.SubmitJob(requests(), timeout=timeout))
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    def get_job(self, job_id: str, max_errors: int | None = None) -> dict[str, Any]:
        return convert.job_dict(self._call(self._index.GetJob, ipb.GetJobRequest(id=job_id, max_errors=max_errors)))

    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The job's state now and at every change, until it ends."""
        for j in self._stream(self._index.WatchJob, ipb.GetJobRequest(id=job_id), timeout):
            yield convert.job_dict(j)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return convert.job_dict(self._call(self._index.CancelJob, ipb.JobRequest(id=job_id)))

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return convert.job_dict(self._call(self._index.ResumeJob, ipb.JobRequest(id=job_id)))

    def list_jobs(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [convert.job_dict(j) for j in self._call(self._index.ListJobs, ipb.ListJobsRequest(limit=limit)).jobs]

    # worker side

    def fetch_chunk(self, job_id: str, idx: int) -> Any:
        return convert.chunk_work(self._call(self._index.FetchChunk, ipb.ChunkRequest(job_id=job_id, chunk=idx)), job_id, idx)

    def commit_chunk(self, commit: Any) -> None:
        self._call(self._index.CommitChunk, convert.commit_request(commit))

    def fail_chunk(self, job_id: str, idx: int, message: str, worker: str, final: bool) -> None:
        req = ipb.FailChunkRequest(job_id=job_id, chunk=idx, message=message, worker=worker, final=final)
        self._call(self._index.FailChunk, req)

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


def _filters_pb(filters: Iterable[tuple[str, str, Any] | dict[str, Any]]) -> list[rpb.Filter]:
    out = []
    for f in filters:
        name, op, value = (f["field"], f["op"], f["value"]) if isinstance(f, dict) else f
        out.append(rpb.Filter(field=name, op=op, value_json=json.dumps(value)))
    return out


def _collect(chunks: Iterable[Chunk]) -> Generated:
    text: list[str] = []
    ids: list[int] = []
    last = Chunk("", [])
    n = 0
    for c in chunks:
        text.append(c.text)
        ids.extend(c.token_ids)
        last = c
        n += 1
    return Generated("".join(text), ids, last.finish_reason, last.stats or {}, chunks=n)
