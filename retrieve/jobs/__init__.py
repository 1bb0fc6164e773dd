"""Batch-indexing jobs, the engine side: what a job is made of (`records.py`), the durable job store (`store.py`), one chunk's run (`chunks.py`:
fetch, chunk and embed, commit; the same code in the server and in workers) and the server's
JobManager (`manager.py`: submission, dispatch, commits, control). The transport stays in services/:
the IndexService servicer and the Celery worker and dispatcher.
"""

from __future__ import annotations

from lodestar.retrieve.jobs.chunks import ChunkSource, ChunkWork, Commit, merge, prepare_each, run_chunk, split
from lodestar.retrieve.jobs.manager import (
    IN_PROCESS,
    Dispatcher,
    InProcessDispatcher,
    JobManager,
    JobsConfig,
    check_staged,
)
from lodestar.retrieve.jobs.records import (
    MAX_LINE,
    MAX_MESSAGE_CHARS,
    MAX_WORKER_CHARS,
    TERMINAL,
    JobError,
    JobInfo,
    StagedChunk,
    check_line,
    check_worker,
    clip,
    parse_line,
)
from lodestar.retrieve.jobs.store import DB_NAME, JobStore

__all__ = [
    "DB_NAME",
    "IN_PROCESS",
    "MAX_LINE",
    "MAX_MESSAGE_CHARS",
    "MAX_WORKER_CHARS",
    "TERMINAL",
    "ChunkSource",
    "ChunkWork",
    "Commit",
    "Dispatcher",
    "InProcessDispatcher",
    "JobError",
    "JobInfo",
    "JobManager",
    "JobStore",
    "JobsConfig",
    "StagedChunk",
    "check_line",
    "check_staged",
    "check_worker",
    "clip",
    "merge",
    "parse_line",
    "prepare_each",
    "run_chunk",
    "split",
]
