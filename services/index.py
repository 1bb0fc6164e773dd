"""IndexService: its servicer and its proto conversion. Job submission, progress and control for users;
fetch/commit for workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from lodestar.errors import InvalidInput
from lodestar.retrieve.jobs import Commit, JobError, check_line
from lodestar.retrieve.prepare import Prepared
from lodestar.retrieve.v1 import index_pb2 as ipb
from lodestar.retrieve.v1 import index_pb2_grpc as ipb_grpc
from lodestar.services.retrieve import config_to_pb, document_to_pb, documents_from_pb
from lodestar.services.runtime import Runtime

T = TypeVar("T")
WATCH_INTERVAL_S = 0.5
DEFAULT_MAX_ERRORS = 100


def job_to_pb(info: Any, errors: Sequence[Any] = (), mode: str = "") -> ipb.Job:
    return ipb.Job(
        id=info.id,
        collection=info.collection,
        source=info.source,
        state=info.state,
        job_state=ipb.JobState.Value("JOB_STATE_" + info.state.upper()),
        lines=info.lines,
        documents=info.documents,
        chunks=info.chunks,
        chunks_done=info.chunks_done,
        chunks_failed=info.chunks_failed,
        written=info.written,
        errors_count=info.errors,
        errors=[ipb.JobError(line=e.line, doc_id=e.doc_id, message=e.message) for e in errors],
        created_at=info.created_at,
        updated_at=info.updated_at,
        finished_at=info.finished_at or 0.0,
        message=info.message,
        workers=info.workers,
        mode=mode,
        processed=info.processed,
    )


def chunk_work_to_pb(w: Any) -> ipb.ChunkWork:
    if w.skip:
        return ipb.ChunkWork(skip=w.skip)
    return ipb.ChunkWork(
        collection=w.collection,
        config=config_to_pb(w.config),
        dimensions=w.dim,
        model=w.model,
        documents=[document_to_pb(d) for d in w.docs],
        lines=w.lines,
    )


def commit_from_pb(r: ipb.CommitChunkRequest) -> Commit:
    """A worker's CommitChunk -> a Commit, checking the flattened spans and vectors add up."""
    docs = documents_from_pb(list(r.documents))
    if len(r.span_counts) != len(docs) or len(r.lines) != len(docs):
        raise InvalidInput(
            f"{len(docs)} documents need as many span_counts and lines; got {len(r.span_counts)} and {len(r.lines)}"
        )
    for i, n in enumerate(r.lines):
        check_line(n, f"lines[{i}]")
    for i, e in enumerate(r.errors):
        check_line(e.line, f"errors[{i}].line")
    chunks = sum(r.span_counts)
    if len(r.spans) != 2 * chunks:
        raise InvalidInput(f"{chunks} chunks need {2 * chunks} span offsets; got {len(r.spans)}")
    # dimensions 0: a collection with dense='none' (no vectors); the writer checks the width against the collection
    if len(r.vectors) != 4 * chunks * r.dimensions:
        raise InvalidInput(
            f"vectors hold {len(r.vectors)} bytes; {chunks} chunks x {r.dimensions} float32 need {4 * chunks * r.dimensions}"
        )
    flat = list(r.spans)
    spans, at = [], 0
    for n in r.span_counts:
        spans.append([(flat[2 * i], flat[2 * i + 1]) for i in range(at, at + n)])
        at += n
    vectors = np.frombuffer(r.vectors, dtype="<f4").reshape(chunks, r.dimensions).astype(np.float32)  # (chunks, D)
    sparse = [(np.asarray(v.ids, dtype=np.int64), np.asarray(v.weights, dtype=np.float32)) for v in r.sparse] or None
    return Commit(
        job_id=r.job_id,
        idx=r.chunk,
        prepared=Prepared(docs, spans, vectors, sparse),
        lines=list(r.lines),
        errors=[JobError(e.line, e.doc_id, e.message) for e in r.errors],
        worker=r.worker,
        model=r.model,
    )


class IndexServicer(ipb_grpc.IndexServiceServicer):
    SERVICE = ipb.DESCRIPTOR.services_by_name["IndexService"]

    @staticmethod
    def add_to_server(servicer: IndexServicer, server: grpc.aio.Server) -> None:
        ipb_grpc.add_IndexServiceServicer_to_server(servicer, server)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _job(self, job_id: str, max_errors: int = DEFAULT_MAX_ERRORS) -> ipb.Job:
        jobs = self.runtime.job_manager()
        info = await self._run(jobs.get, job_id)
        errors = await self._run(jobs.errors, job_id, max_errors) if max_errors else []
        return job_to_pb(info, errors, jobs.mode)

    async def SubmitJob(
        self, requests: AsyncIterator[ipb.SubmitJobRequest], context: grpc.aio.ServicerContext
    ) -> ipb.Job:
        jobs = self.runtime.job_manager()
        job_id = ""
        try:
            async for req in requests:
                if not job_id:
                    if not req.collection:
                        raise InvalidInput("the first SubmitJob message must name the collection")
                    job_id = await self._run(jobs.open, req.collection, req.source, req.chunk_docs)
                if req.lines:
                    await self._run(jobs.stage, job_id, [(line.number, line.data) for line in req.lines])
            if not job_id:
                raise InvalidInput("SubmitJob received no message: send the collection and the lines")
            await self._run(jobs.seal, job_id)
        except BaseException:
            if job_id:  # a broken or refused upload leaves no half-staged job behind
                await self._run(jobs.discard, job_id)
            raise
        return await self._job(job_id)

    async def GetJob(self, request: ipb.GetJobRequest, context: grpc.aio.ServicerContext) -> ipb.Job:
        return await self._job(request.id, request.max_errors if request.HasField("max_errors") else DEFAULT_MAX_ERRORS)

    async def WatchJob(self, request: ipb.GetJobRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[ipb.Job]:
        max_errors = request.max_errors if request.HasField("max_errors") else 0
        last: tuple[Any, ...] | None = None
        while True:
            job = await self._job(request.id, max_errors)
            key = (job.state, job.chunks_done, job.chunks_failed, job.written, job.errors_count)
            if key != last:
                last = key
                yield job
            if job.state in ("done", "failed", "cancelled"):
                return
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def CancelJob(self, request: ipb.JobRequest, context: grpc.aio.ServicerContext) -> ipb.Job:
        await self._run(self.runtime.job_manager().cancel, request.id)
        return await self._job(request.id)

    async def ResumeJob(self, request: ipb.JobRequest, context: grpc.aio.ServicerContext) -> ipb.Job:
        await self._run(self.runtime.job_manager().resume, request.id)
        return await self._job(request.id)

    async def ListJobs(self, request: ipb.ListJobsRequest, context: grpc.aio.ServicerContext) -> ipb.ListJobsResponse:
        jobs = self.runtime.job_manager()
        infos = await self._run(jobs.list, request.limit if request.HasField("limit") else 100)
        return ipb.ListJobsResponse(jobs=[job_to_pb(i, (), jobs.mode) for i in infos])

    async def FetchChunk(self, request: ipb.ChunkRequest, context: grpc.aio.ServicerContext) -> ipb.ChunkWork:
        work = await self._run(self.runtime.job_manager().fetch, request.job_id, request.chunk)
        return chunk_work_to_pb(work)

    async def CommitChunk(
        self, request: ipb.CommitChunkRequest, context: grpc.aio.ServicerContext
    ) -> ipb.CommitChunkResponse:
        await self._run(self.runtime.job_manager().commit, commit_from_pb(request))
        return ipb.CommitChunkResponse()

    async def FailChunk(
        self, request: ipb.FailChunkRequest, context: grpc.aio.ServicerContext
    ) -> ipb.CommitChunkResponse:
        jobs = self.runtime.job_manager()
        await self._run(
            lambda: jobs.chunk_failed(request.job_id, request.chunk, request.message, request.worker, request.final)
        )
        return ipb.CommitChunkResponse()
