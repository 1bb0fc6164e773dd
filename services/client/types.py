"""What the client returns: plain dataclasses (no protobuf), one per kind of answer."""

from __future__ import annotations

from dataclasses import dataclass

from lodestar.retrieve.types import CollectionConfig, CollectionStats, Hit


class ClientError(Exception):
    """A call failed; `code` is the gRPC status name (e.g. INVALID_ARGUMENT), `message` the server's words;
    `retry_after_ms` the server's hint when it refused the call for load (RESOURCE_EXHAUSTED), else None."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


@dataclass
class CollectionInfo(CollectionStats):
    """A collection's statistics, and its configuration where the call returns it."""

    config: CollectionConfig | None = None


@dataclass(frozen=True)
class ModeInfo:
    name: str
    description: str
    default_prompt: str


@dataclass(frozen=True)
class ServerInfo:
    """EmbedService.Info: the model, its limits, modes and adapters."""

    model: str
    dimensions: int
    max_tokens: int
    max_texts_per_request: int
    modes: list[ModeInfo]
    default_mode: str
    adapters: list[str]
    dtypes: list[str]
    torch_dtype: str
    device: str
    num_layers: int
    version: str
    runtime: str = ""


@dataclass(frozen=True)
class CompressInfo:
    """CompressService.Info: methods, orders, limits and the calibrated selective threshold."""

    methods: list[str]
    orders: list[str]
    default_mode: str
    threshold: float
    max_passages: int
    max_input_tokens: int
    max_abstractive_input_tokens: int
    max_summary_tokens: int
    default_budget_ratio: float


@dataclass(frozen=True)
class JobError:
    """A line of a job's input that was not written, and why."""

    line: int
    doc_id: str
    message: str


@dataclass(frozen=True)
class Job:
    """An indexing job's state; `errors` holds the first errors (as many as the call asked for)."""

    id: str
    collection: str
    source: str
    state: str  # staging | running | done | failed | cancelled
    lines: int
    documents: int
    chunks: int
    chunks_done: int
    chunks_failed: int
    written: int
    errors_count: int
    errors: list[JobError]
    created_at: float
    updated_at: float
    finished_at: float | None
    message: str
    workers: dict[str, int]
    mode: str  # celery | in-process
    processed: int

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Datastore:
    """A token datastore generation drafts from."""

    name: str
    tokens: int
    documents: int
    segments: int
    path: str
    is_default: bool


@dataclass(frozen=True)
class GenerationStats:
    """Counters of one generation: forwards, drafts accepted, time."""

    prompt_tokens: int
    generated_tokens: int
    steps: int
    draft_tokens: int
    accepted_draft_tokens: int
    mean_accepted_tokens: float
    prefill_s: float
    decode_s: float
    tokens_per_s: float


@dataclass
class Chunk:
    """One streamed piece of a generation; the last has finish_reason (length|eos|stop|cancelled) and stats."""

    text: str
    token_ids: list[int]
    finish_reason: str = ""
    stats: GenerationStats | None = None


@dataclass
class AnswerContext:
    """First item of an Answer stream: what was retrieved and what the model reads."""

    sources: list[Hit]
    context: str  # "" = closed-book (nothing retrieved, or selective augmentation skipped it)
    decision: str  # augment | skip
    context_tokens: int
    passage_tokens: int


@dataclass
class Generated:
    """A whole generation (or answer): its text, tokens, why it ended, and its counters."""

    text: str
    token_ids: list[int]
    finish_reason: str
    stats: GenerationStats | None
    context: AnswerContext | None = None  # Answer only
    chunks: int = 0  # streamed messages
