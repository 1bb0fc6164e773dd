"""What a job is made of, apart from where it is stored: its records (JobInfo, JobError, a staged
chunk), the limits on what a worker may report, and the parsing of one input line into a document."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lodestar.errors import InvalidInput
from lodestar.retrieve.prepare import TOO_DEEP, DocLimits, validate_document
from lodestar.retrieve.types import Document

TERMINAL = ("done", "failed", "cancelled")
MAX_WORKER_CHARS = 255  # a worker's name (a host name is at most 253): kept per chunk, listed in every Job
MAX_MESSAGE_CHARS = 2000  # a failure or error message is kept (and logged) up to this many characters
MAX_LINE = 2**63 - 1  # SQLite's INTEGER: a larger line number (the wire allows uint64) cannot be stored


@dataclass(frozen=True)
class JobError:
    line: int
    doc_id: str
    message: str


@dataclass
class JobInfo:
    id: str
    collection: str
    source: str
    state: str
    lines: int  # input lines read (blank ones included)
    documents: int  # valid documents staged
    chunks: int
    chunks_done: int
    chunks_failed: int
    written: int  # documents written to the collection
    errors: int  # documents not written (bad input or failed), see JobStore.errors
    created_at: float
    updated_at: float
    finished_at: float | None
    message: str
    workers: dict[str, int] = field(default_factory=dict)  # chunks done per worker
    processed: int = 0  # staged documents whose chunk finished (done or failed)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


@dataclass
class StagedChunk:
    job_id: str
    idx: int
    collection: str
    state: str  # the chunk's state
    job_state: str
    docs: list[Document]
    lines: list[int]


def check_line(number: int, what: str) -> None:
    if not 0 <= number <= MAX_LINE:
        raise InvalidInput(f"{what} {number} is out of range: use 0..{MAX_LINE} (1-based line numbers)")


def check_worker(worker: str) -> None:
    if len(worker) > MAX_WORKER_CHARS:
        raise InvalidInput(f"worker name is {len(worker)} characters; the limit is {MAX_WORKER_CHARS}")


def clip(message: str) -> str:
    """A message as it is kept and logged: at most MAX_MESSAGE_CHARS characters."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 40] + f"... ({len(message)} characters, cut)"


def parse_line(number: int, data: bytes, limits: DocLimits) -> Document | JobError | None:
    """One jsonl line -> a validated Document, the error that keeps it out, or None for a blank line.
    Accepts {id|_id, text, title?, metadata?}; other top-level fields become metadata."""
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return JobError(number, "", f"line {number}: not valid UTF-8 (byte {exc.start})")
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return JobError(number, "", f"line {number}: not valid JSON ({exc.msg} at char {exc.pos})")
    except RecursionError:
        return JobError(number, "", f"line {number}: {TOO_DEEP}")
    if not isinstance(obj, dict):
        return JobError(number, "", f"line {number}: a JSON object is expected, got {type(obj).__name__}")
    doc_id = obj.get("id", obj.get("_id"))
    title, text = obj.get("title") or "", obj.get("text")
    if not isinstance(text, str) or not isinstance(title, str):
        return JobError(number, str(doc_id or ""), f"line {number}: 'text' (and 'title') must be strings")
    body = f"{title.strip()}. {text.strip()}" if title.strip() and text.strip() else (title.strip() or text.strip())
    meta = obj.get("metadata")
    if meta is None:
        meta = {k: v for k, v in obj.items() if k not in ("id", "_id", "text", "title")}
    doc = Document(id=str(doc_id) if isinstance(doc_id, (str, int)) and str(doc_id) else "", text=body, metadata=meta)
    try:
        validate_document(doc, limits, f"line {number}")
    except InvalidInput as exc:
        return JobError(number, doc.id, str(exc))
    return doc
