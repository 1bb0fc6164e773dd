"""Running one chunk of an indexing job: fetch its documents, chunk and embed them, commit.

The same function runs in the server (jobs without a broker) and in Celery workers; only the
`ChunkSource` differs (the job store in-process, gRPC calls from a worker). A document that makes
the chunk fail (it cannot be embedded or the collection refuses it) is isolated by retrying the
chunk's documents one by one: it lands in the job's error list with its line, the rest is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lodestar.embedding import Embedder
from lodestar.errors import Cancelled, DeadlineExceeded, InvalidInput
from lodestar.retrieve.jobs.records import JobError
from lodestar.retrieve.prepare import Prepared, prepare
from lodestar.retrieve.types import CollectionConfig, Document

log = logging.getLogger(__name__)


@dataclass
class ChunkWork:
    """What a worker needs for one chunk; `skip` says why there is nothing to do (done, cancelled)."""

    job_id: str
    idx: int
    collection: str = ""
    config: CollectionConfig | None = None
    dim: int = 0
    model: str = ""
    docs: list[Document] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skip: str = ""


@dataclass
class Commit:
    """A worker's result for one chunk: its prepared documents (with their lines) and the ones that failed."""

    job_id: str
    idx: int
    prepared: Prepared
    lines: list[int]  # of prepared.docs
    errors: list[JobError]
    worker: str
    model: str


class ChunkSource(Protocol):
    """Where a chunk's documents come from and its result goes: the JobManager, or the server over gRPC."""

    def fetch(self, job_id: str, idx: int) -> ChunkWork: ...

    def commit(self, commit: Commit) -> None: ...


def merge(parts: list[Prepared], dim: int) -> Prepared:
    """One Prepared of several (documents and chunk vectors in order)."""
    if not parts:
        return Prepared([], [], np.empty((0, dim), dtype=np.float32))
    sparse = [v for p in parts for v in p.sparse or ()] if parts[0].sparse is not None else None
    return Prepared(
        [d for p in parts for d in p.docs],
        [s for p in parts for s in p.spans],
        np.concatenate([p.vectors for p in parts]),
        sparse,
    )


def prepare_each(
    embedder: Embedder, cfg: CollectionConfig, dim: int, docs: list[Document], lines: list[int]
) -> tuple[Prepared, list[int], list[JobError]]:
    """Prepare documents together; if that fails, one by one, keeping the failures as errors."""
    try:
        return prepare(embedder, cfg, dim, docs), list(lines), []
    except (Cancelled, DeadlineExceeded):
        raise  # stopped (job cancelled, server shutting down): no document is at fault
    except Exception as exc:  # some document spoils the batch: find which
        log.warning("chunk of %d documents failed to embed (%s); retrying them one by one", len(docs), exc)
    good: list[Prepared] = []
    kept: list[int] = []
    errors: list[JobError] = []
    for doc, line in zip(docs, lines):
        try:
            good.append(prepare(embedder, cfg, dim, [doc]))
            kept.append(line)
        except Exception as exc:
            errors.append(JobError(line, doc.id, f"line {line} (id {doc.id[:80]!r}): could not be embedded: {exc}"))
    return merge(good, dim), kept, errors


def run_chunk(source: ChunkSource, embedder: Embedder, job_id: str, idx: int, worker: str) -> dict[str, Any]:
    """Embed and commit chunk `idx` of job `job_id`; -> a small report (for logs and task results)."""
    work = source.fetch(job_id, idx)
    if work.skip:
        return {"job": job_id, "chunk": idx, "skipped": work.skip}
    assert work.config is not None
    model = str(getattr(getattr(embedder, "backbone", None), "model_id", ""))
    if work.model and model and work.model != model:
        raise InvalidInput(
            f"this worker runs model {model!r}; collection {work.collection!r} is embedded with {work.model!r}"
        )
    prepared, lines, errors = prepare_each(embedder, work.config, work.dim, work.docs, work.lines)
    source.commit(Commit(job_id, idx, prepared, lines, errors, worker, model))
    return {"job": job_id, "chunk": idx, "written": len(prepared.docs), "errors": len(errors)}


def split(prepared: Prepared) -> list[Prepared]:
    """One Prepared per document (its spans and its rows of the vectors)."""
    out = []
    at = 0
    for doc, spans in zip(prepared.docs, prepared.spans):
        sparse = prepared.sparse[at : at + len(spans)] if prepared.sparse is not None else None
        out.append(Prepared([doc], [spans], prepared.vectors[at : at + len(spans)], sparse))
        at += len(spans)
    return out
