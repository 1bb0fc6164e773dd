"""Every client method, written once: each builds its request and says how the answer is read; the
sync `Client` and the asyncio `AsyncClient` only differ in how they run that plan (`_run`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from grpc_health.v1 import health_pb2

from lodestar.compress_ctx.types import CompressResult
from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.embed.types import EmbedOptions, EmbedResult
from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.retrieve import types as rt
from lodestar.retrieve.v1 import index_pb2 as ipb
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services.client import compress, embed, generate, index, retrieve
from lodestar.services.client.retrieve import FilterSpec
from lodestar.services.client.types import (
    AnswerContext,
    Chunk,
    CollectionInfo,
    CompressInfo,
    Datastore,
    Generated,
    Job,
    ServerInfo,
)

T = TypeVar("T")
Rpc = tuple[str, str]  # (service key of the client's stubs, method name)


@dataclass
class Unary(Generic[T]):
    """One request, one response."""

    rpc: Rpc
    request: Any
    read: Callable[[Any], T]
    timeout: float | None
    on_error: Callable[[Any], T] | None = None  # an RpcError -> a result instead of raising


@dataclass
class Split(Generic[T]):
    """One input sent as several requests of at most the server's per-request limit, results merged."""

    rpc: Rpc
    count: int
    make: Callable[[int], list[Any]]  # per-request limit -> the requests
    read: Callable[[Any], Any]
    merge: Callable[[list[Any]], T]
    timeout: float | None


@dataclass
class Upload(Generic[T]):
    """A stream of requests, one response."""

    rpc: Rpc
    requests: Iterable[Any]
    read: Callable[[Any], T]
    timeout: float | None


@dataclass
class Stream(Generic[T]):
    """A response stream (`request` is an iterable of requests for a bidirectional call); each response
    gives zero or more items: read(response, is_first)."""

    rpc: Rpc
    request: Any
    read: Callable[[Any, bool], Iterable[T]]
    timeout: float | None
    bidi: bool = False


class Calls:
    """The methods of both clients. `_run` executes a plan; `_fold` reduces a stream to one value."""

    timeout: float | None

    def _run(self, plan: Any) -> Any:
        raise NotImplementedError

    def _fold(self, items: Any, fold: Callable[[Iterable[Any]], T]) -> Any:
        raise NotImplementedError

    def _t(self, timeout: float | None) -> float | None:
        return timeout or self.timeout

    # --- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: str | list[str], *, timeout: float | None = None, **options: Any) -> EmbedResult:
        """Embed one text (a str) or many; more than the server takes in one request are sent as several.
        Options: mode, prompt, instruction, adapter, dimensions, normalize, dtype (float32|float16|int8|binary),
        truncate, max_tokens, start_layer/end_layer/output_layer; learned sparse: sparse=True (result.sparse:
        per text token ids and weights, by weight), sparse_top_k, sparse_threshold, with_dense (False:
        sparse vectors only), sparse_tokens."""
        items, opts = embed.as_texts(texts), EmbedOptions(**options)
        return self._run(
            Split(
                ("embed", "Embed"),
                len(items),
                lambda n: embed.requests(items, opts, n),
                embed.result,
                embed.merged,
                self._t(timeout),
            )
        )

    def embed_stream(
        self, batches: Iterable[list[str]], *, timeout: float | None = None, **options: Any
    ) -> Iterator[EmbedResult]:
        """Stream many batches over one call; results come back in batch order."""
        opts = EmbedOptions(**options)
        reqs = (embed.request(embed.as_texts(b), opts, request_id=str(i)) for i, b in enumerate(batches))
        return self._run(Stream(("embed", "EmbedStream"), reqs, lambda r, _: [embed.result(r)], timeout, bidi=True))

    def info(self) -> ServerInfo:
        """The model, its width, limits, modes and adapters."""
        return self._run(Unary(("embed", "Info"), pb.InfoRequest(), embed.server_info, self.timeout))

    # --- retrieval ----------------------------------------------------------------------------

    def create_collection(self, name: str, **config: Any) -> CollectionInfo:
        """Config keys: mode, query_prompt, query_instruction, doc_prompt, doc_instruction, adapter,
        dimensions, metric (cosine|ip|l2), index (FAISS factory string), shards (1..64: dense index
        shards searched in parallel), sparse (none|bm25|learned), dense (model|none: none keeps no
        vectors and runs no model forward), chunk_tokens, chunk_overlap; for learned sparse also
        sparse_mode, sparse_adapter, sparse_top_k, query_top_k, query_idf; backend (faiss|milvus:
        milvus needs the server's LODESTAR_MILVUS_URI)."""
        req = rpb.CreateCollectionRequest(config=retrieve.config(name, **config))
        return self._run(Unary(("retrieve", "CreateCollection"), req, retrieve.collection_info, self.timeout))

    def drop_collection(self, name: str) -> None:
        return self._run(
            Unary(("retrieve", "DropCollection"), rpb.DropCollectionRequest(name=name), _none, self.timeout)
        )

    def list_collections(self) -> list[CollectionInfo]:
        return self._run(
            Unary(
                ("retrieve", "ListCollections"),
                rpb.ListCollectionsRequest(),
                lambda r: [retrieve.collection_info(s) for s in r.collections],
                self.timeout,
            )
        )

    def upsert(
        self, collection: str, documents: Iterable[dict[str, Any] | rt.Document], timeout: float | None = None
    ) -> tuple[int, int]:
        """Insert or replace documents ({"id", "text", "metadata"} or Document); returns (documents, chunks)."""
        req = rpb.UpsertRequest(collection=collection, documents=[retrieve.document(d) for d in documents])
        return self._run(Unary(("retrieve", "Upsert"), req, lambda r: (r.documents, r.chunks), self._t(timeout)))

    def delete(self, collection: str, ids: list[str]) -> int:
        return self._run(
            Unary(
                ("retrieve", "Delete"),
                rpb.DeleteRequest(collection=collection, ids=ids),
                lambda r: r.deleted,
                self.timeout,
            )
        )

    def get(self, collection: str, ids: list[str]) -> list[rt.Document | None]:
        """The documents by id, in order; None where an id is not stored."""
        return self._run(
            Unary(
                ("retrieve", "Get"),
                rpb.GetRequest(collection=collection, ids=ids),
                lambda r: [retrieve.document_from_pb(d) if found else None for d, found in zip(r.documents, r.found)],
                self.timeout,
            )
        )

    def search(
        self,
        collection: str,
        queries: str | list[str],
        *,
        k: int | None = None,
        retriever: str = "",
        fusion: str = "",
        alpha: float | None = None,
        rrf_k: int | None = None,
        filters: Iterable[FilterSpec] = (),
        include_text: bool | None = None,
        feedback_chunks: int | None = None,
        feedback_weight: float | None = None,
        length_norm: float | None = None,
        timeout: float | None = None,
    ) -> list[list[rt.Hit]]:
        """Search one query (str) or a batch: one hit list per query. Unset options take the server's
        defaults (k 10, retriever dense, fusion auto). retriever: dense | sparse | hybrid; fusion: auto
        (the collection's calibrated choice, `stats(name).calibration`) | rrf | weighted (alpha * dense +
        (1 - alpha) * sparse, min-max scaled) | dbsf (the same weights over mean +- 3 std scaling); filters: (field, op, value) with op in eq ne in
        nin gt gte lt lte, AND-ed and applied before ranking. Learned sparse: feedback_chunks adds the mean
        of the first ranking's top chunks to each query (pseudo-relevance feedback), length_norm is BM25's
        b for chunk length (0..1)."""
        options = retrieve.search_options(
            k=k,
            retriever=retriever,
            fusion=fusion,
            alpha=alpha,
            rrf_k=rrf_k,
            filters=filters,
            include_text=include_text,
            feedback_chunks=feedback_chunks,
            feedback_weight=feedback_weight,
            length_norm=length_norm,
        )
        req = rpb.SearchRequest(collection=collection, queries=embed.as_texts(queries), options=options)
        return self._run(Unary(("retrieve", "Search"), req, retrieve.hits, self._t(timeout)))

    def snapshot(self, collection: str) -> dict[str, Any]:
        """Write the collection's indexes to disk now; returns the snapshot's manifest."""
        return self._run(
            Unary(
                ("retrieve", "Snapshot"),
                rpb.SnapshotRequest(collection=collection),
                lambda r: json.loads(r.manifest_json),
                self.timeout,
            )
        )

    def restore(self, collection: str, path: str) -> CollectionInfo:
        return self._run(
            Unary(
                ("retrieve", "Restore"),
                rpb.RestoreRequest(collection=collection, path=path),
                retrieve.collection_info,
                self.timeout,
            )
        )

    def rebuild(self, collection: str) -> CollectionInfo:
        """Rebuild the indexes from the document store (no time limit: it can take long)."""
        return self._run(
            Unary(("retrieve", "Rebuild"), rpb.RebuildRequest(collection=collection), retrieve.collection_info, None)
        )

    def calibrate(self, collection: str, seed: int | None = None) -> CollectionInfo:
        """Choose the collection's hybrid fusion now (what `fusion="auto"` uses) from pseudo-queries drawn
        from its own chunks; the stats' `calibration` holds the choice and its evidence (no time limit:
        it embeds a few hundred texts)."""
        req = rpb.CalibrateRequest(collection=collection, seed=seed)
        return self._run(Unary(("retrieve", "Calibrate"), req, retrieve.collection_info, None))

    def stats(self, collection: str) -> CollectionInfo:
        return self._run(
            Unary(
                ("retrieve", "Stats"), rpb.StatsRequest(collection=collection), retrieve.collection_info, self.timeout
            )
        )

    # --- compression --------------------------------------------------------------------------

    def compress(
        self, query: str, passages: list[str], *, timeout: float | None = None, **options: Any
    ) -> CompressResult:
        """Compress passages for a query. Options: method (extractive|abstractive), budget_tokens,
        budget_ratio, top_n, order (original|score), selective, threshold, max_new_tokens,
        sentence_options / query_options ({mode, prompt, instruction, adapter}), adapter (abstractive)."""
        req = compress.request(query, list(passages), **options)
        return self._run(Unary(("compress", "Compress"), req, compress.result, self._t(timeout)))

    def compress_info(self) -> CompressInfo:
        return self._run(Unary(("compress", "Info"), cpb.InfoRequest(), compress.info, self.timeout))

    # --- generation ---------------------------------------------------------------------------

    def generate_stream(
        self,
        prompt: str | list[int],
        *,
        passages: list[str] | None = None,
        chat: bool = False,
        timeout: float | None = None,
        **decoding: Any,
    ) -> Iterator[Chunk]:
        """Stream a continuation; leaving the loop early cancels the call (the server stops). Decoding
        options: max_new_tokens, stop, temperature, top_p, seed, speculative, datastore, self_draft_layers.
        `passages` feed the drafts only (they are not put in the prompt)."""
        req = generate.generate_request(prompt, passages, chat, **decoding)
        return self._run(Stream(("generate", "Generate"), req, lambda c, _: generate.generate_items(c), timeout))

    def generate(self, prompt: str | list[int], **kwargs: Any) -> Generated:
        """Run a generation to the end (same arguments as generate_stream)."""
        return self._fold(self.generate_stream(prompt, **kwargs), generate.collect)

    def answer_stream(
        self,
        question: str,
        collection: str,
        *,
        k: int | None = None,
        retriever: str = "",
        filters: Iterable[FilterSpec] = (),
        compression: str = "",
        budget_tokens: int | None = None,
        selective: bool = False,
        fusion: str = "",
        alpha: float | None = None,
        rrf_k: int | None = None,
        threshold: float | None = None,
        feedback_chunks: int | None = None,
        feedback_weight: float | None = None,
        length_norm: float | None = None,
        timeout: float | None = None,
        **decoding: Any,
    ) -> Iterator[AnswerContext | Chunk]:
        """Retrieve -> compress -> generate; the first item is the AnswerContext, then text Chunks.
        Retrieval options as in search (Answer's defaults: k 5, hybrid where the collection has a sparse
        side (sparse for a collection without a dense side), fusion auto); compression: extractive | abstractive | none; threshold is
        the selective cut (default: the compressor's calibrated one)."""
        search = retrieve.search_options(
            k=k,
            retriever=retriever,
            fusion=fusion,
            alpha=alpha,
            rrf_k=rrf_k,
            filters=filters,
            feedback_chunks=feedback_chunks,
            feedback_weight=feedback_weight,
            length_norm=length_norm,
        )
        req = generate.answer_request(
            question,
            collection,
            search,
            compression=compression,
            budget_tokens=budget_tokens,
            selective=selective,
            threshold=threshold,
            **decoding,
        )
        return self._run(Stream(("generate", "Answer"), req, generate.answer_items, timeout))

    def answer(self, question: str, collection: str, **kwargs: Any) -> Generated:
        """Run Answer to the end (same arguments as answer_stream); `.context` holds the sources."""
        return self._fold(self.answer_stream(question, collection, **kwargs), generate.collect)

    def list_datastores(self) -> list[Datastore]:
        return self._run(
            Unary(
                ("generate", "ListDatastores"),
                gpb.ListDatastoresRequest(),
                lambda r: [generate.datastore(d) for d in r.datastores],
                self.timeout,
            )
        )

    def add_to_datastore(
        self, name: str, texts: Iterable[str], *, batch: int = 256, compact: bool = False, timeout: float | None = None
    ) -> Datastore:
        """Create datastore `name` on the server or append `texts` to it (streamed in batches)."""
        return self._run(
            Upload(
                ("generate", "AddToDatastore"),
                generate.add_requests(name, texts, batch, compact),
                generate.datastore,
                self._t(timeout),
            )
        )

    # --- batch indexing jobs ---------------------------------------------------------------

    def submit_job(
        self,
        collection: str,
        lines: Iterable[tuple[int, bytes]],
        *,
        source: str = "",
        chunk_docs: int = 0,
        batch: int = 256,
        timeout: float | None = None,
    ) -> Job:
        """Upload (line number, raw jsonl line) pairs as one job; it starts when the upload ends.
        Lines the server cannot use are listed in the job's errors, with their numbers."""
        reqs = index.submit_requests(collection, lines, source, chunk_docs, batch)
        return self._run(Upload(("index", "SubmitJob"), reqs, index.job, timeout))

    def get_job(self, job_id: str, max_errors: int | None = None) -> Job:
        return self._run(
            Unary(("index", "GetJob"), ipb.GetJobRequest(id=job_id, max_errors=max_errors), index.job, self.timeout)
        )

    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[Job]:
        """The job's state now and at every change, until it ends."""
        return self._run(
            Stream(("index", "WatchJob"), ipb.GetJobRequest(id=job_id), lambda j, _: [index.job(j)], timeout)
        )

    def cancel_job(self, job_id: str) -> Job:
        return self._run(Unary(("index", "CancelJob"), ipb.JobRequest(id=job_id), index.job, self.timeout))

    def resume_job(self, job_id: str) -> Job:
        return self._run(Unary(("index", "ResumeJob"), ipb.JobRequest(id=job_id), index.job, self.timeout))

    def list_jobs(self, limit: int | None = None) -> list[Job]:
        return self._run(
            Unary(
                ("index", "ListJobs"),
                ipb.ListJobsRequest(limit=limit),
                lambda r: [index.job(j) for j in r.jobs],
                self.timeout,
            )
        )

    # worker side

    def fetch_chunk(self, job_id: str, idx: int) -> Any:
        req = ipb.ChunkRequest(job_id=job_id, chunk=idx)
        return self._run(Unary(("index", "FetchChunk"), req, lambda r: index.chunk_work(r, job_id, idx), self.timeout))

    def commit_chunk(self, commit: Any) -> None:
        return self._run(Unary(("index", "CommitChunk"), index.commit_request(commit), _none, self.timeout))

    def fail_chunk(self, job_id: str, idx: int, message: str, worker: str, final: bool) -> None:
        req = ipb.FailChunkRequest(job_id=job_id, chunk=idx, message=message, worker=worker, final=final)
        return self._run(Unary(("index", "FailChunk"), req, _none, self.timeout))

    # --- health -------------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN, or the call's status (UNAVAILABLE: nothing answers)."""
        return self._run(
            Unary(
                ("health", "Check"),
                health_pb2.HealthCheckRequest(service=service),
                lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
                5.0,
                on_error=lambda exc: exc.code().name,
            )
        )


def _none(_: Any) -> None:
    return None
