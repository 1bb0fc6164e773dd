"""IndexService: job submission, progress and control for users; fetch/commit for workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from lodestar.errors import InvalidInput
from lodestar.retrieve.v1 import index_pb2 as ipb
from lodestar.retrieve.v1 import index_pb2_grpc as ipb_grpc
from lodestar.services import convert
from lodestar.services.runtime import Runtime

T = TypeVar("T")
WATCH_INTERVAL_S = 0.5
DEFAULT_MAX_ERRORS = 100


class IndexServicer(ipb_grpc.IndexServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _job(self, job_id: str, max_errors: int = DEFAULT_MAX_ERRORS) -> ipb.Job:
        jobs = self.runtime.job_manager()
        info = await self._run(jobs.get, job_id)
        errors = await self._run(jobs.errors, job_id, max_errors) if max_errors else []
        return convert.job_pb(info, errors, jobs.mode)

    async def SubmitJob(self, requests: AsyncIterator[ipb.SubmitJobRequest], context: grpc.aio.ServicerContext) -> ipb.Job:
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
        return ipb.ListJobsResponse(jobs=[convert.job_pb(i, (), jobs.mode) for i in infos])

    async def FetchChunk(self, request: ipb.ChunkRequest, context: grpc.aio.ServicerContext) -> ipb.ChunkWork:
        work = await self._run(self.runtime.job_manager().fetch, request.job_id, request.chunk)
        return convert.chunk_work_pb(work)

    async def CommitChunk(self, request: ipb.CommitChunkRequest, context: grpc.aio.ServicerContext) -> ipb.CommitChunkResponse:
        await self._run(self.runtime.job_manager().commit, convert.commit(request))
        return ipb.CommitChunkResponse()

    async def FailChunk(self, request: ipb.FailChunkRequest, context: grpc.aio.ServicerContext) -> ipb.CommitChunkResponse:
        jobs = self.runtime.job_manager()
        await self._run(lambda: jobs.chunk_failed(request.job_id, request.chunk, request.message, request.worker, request.final))
        return ipb.CommitChunkResponse()
