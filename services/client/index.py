"""IndexService on the client side, user and worker calls (the mirror of lodestar.services.index)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lodestar.embed.v1 import embed_pb2 as pb
from lodestar.retrieve.v1 import index_pb2 as ipb
from lodestar.services.client.retrieve import config_from_pb, document, document_from_pb
from lodestar.services.client.types import Job, JobError


def job(j: ipb.Job) -> Job:
    state = ipb.JobState.Name(j.job_state).removeprefix("JOB_STATE_").lower() if j.job_state else j.state
    return Job(
        id=j.id,
        collection=j.collection,
        source=j.source,
        state=state,
        lines=j.lines,
        documents=j.documents,
        chunks=j.chunks,
        chunks_done=j.chunks_done,
        chunks_failed=j.chunks_failed,
        written=j.written,
        errors_count=j.errors_count,
        errors=[JobError(e.line, e.doc_id, e.message) for e in j.errors],
        created_at=j.created_at,
        updated_at=j.updated_at,
        finished_at=j.finished_at or None,
        message=j.message,
        workers=dict(j.workers),
        mode=j.mode,
        processed=j.processed,
    )


def submit_requests(
    collection: str, lines: Iterable[tuple[int, bytes]], source: str, chunk_docs: int, batch: int
) -> Iterator[ipb.SubmitJobRequest]:
    """The job's header, then its (line number, raw line) pairs in batches."""
    yield ipb.SubmitJobRequest(collection=collection, source=source, chunk_docs=chunk_docs)
    buf: list[ipb.Line] = []
    for number, data in lines:
        buf.append(ipb.Line(number=number, data=data))
        if len(buf) >= batch:
            yield ipb.SubmitJobRequest(lines=buf)
            buf = []
    if buf:
        yield ipb.SubmitJobRequest(lines=buf)


def chunk_work(resp: ipb.ChunkWork, job_id: str, idx: int) -> Any:
    from lodestar.retrieve.jobs import ChunkWork

    if resp.skip:
        return ChunkWork(job_id, idx, skip=resp.skip)
    return ChunkWork(
        job_id,
        idx,
        resp.collection,
        config_from_pb(resp.config),
        resp.dimensions,
        resp.model,
        [document_from_pb(d) for d in resp.documents],
        list(resp.lines),
    )


def commit_request(c: Any) -> ipb.CommitChunkRequest:
    p = c.prepared
    return ipb.CommitChunkRequest(
        job_id=c.job_id,
        chunk=c.idx,
        worker=c.worker,
        model=c.model,
        documents=[document(d) for d in p.docs],
        lines=c.lines,
        span_counts=[len(s) for s in p.spans],
        spans=[x for s in p.spans for ab in s for x in ab],
        vectors=np.ascontiguousarray(p.vectors, dtype="<f4").tobytes(),
        dimensions=int(p.vectors.shape[1]),
        errors=[ipb.JobError(line=e.line, doc_id=e.doc_id, message=e.message) for e in c.errors],
        sparse=[pb.SparseVector(ids=t.tolist(), weights=w.tolist()) for t, w in p.sparse or ()],
    )
