"""Every setting Lodestar reads from the environment, declared once (prefix LODESTAR_).

Read at start-up by `Settings()` (the CLI and server factory build one); never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICES = ("embed", "retrieve", "index", "compress", "generate")
# The adapters this project ships (adapters/ beside the source tree), offered by name wherever the
# server is started from; ./adapters first, so a deployment's own folder wins on a name clash.
SHIPPED_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"


def _default_adapter_dirs() -> tuple[Path, ...]:
    dirs = [Path("adapters")]
    if SHIPPED_ADAPTERS.is_dir() and SHIPPED_ADAPTERS != Path("adapters").resolve():
        dirs.append(SHIPPED_ADAPTERS)
    return tuple(dirs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LODESTAR_", env_file=None, extra="ignore")

    # --- network ---
    host: str = Field("127.0.0.1", description="address the gRPC server binds")
    port: int = Field(50051, description="gRPC port; 0 picks a free one (tests)")
    server: str = Field("127.0.0.1:50051", description="HOST:PORT the CLI and client talk to")
    only: Annotated[tuple[str, ...], NoDecode] = Field(
        SERVICES, description="services this process serves (comma-separated in env)"
    )

    # --- model ---
    model: str = Field("bundled", description="'bundled' (SmolLM2-135M-Instruct GGUF), a HF folder, or a .gguf file")
    dtype: str = Field(
        "auto",
        description="auto | float32 | bfloat16 | float16 (auto: bf16 only where native, but float32 under embed_runtime bf16_weights or bf16_matmul, which multiply in bf16 themselves over fp32 weights; embed_runtime=auto picks bf16_weights where bf16 is native on a CPU)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "lodestar", description="dequantised GGUF weights and exported ONNX decoders live here"
    )
    adapter_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        default_factory=_default_adapter_dirs,
        description="folders whose subfolders are adapters offered by name (default ./adapters, then the ones this project ships)",
    )
    max_resident_adapters: int = Field(4, ge=1, description="adapters kept loaded at once; LRU unloaded beyond")
    restore_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="folders Restore may read snapshots from, comma-separated (empty: the server's data_dir only)",
    )
    adapter_paths: bool = Field(
        True,
        description="requests may name an adapter by a path on the server (any folder holding a peft adapter); false: only the names adapter_dirs offer (where clients are not trusted with the server's files)",
    )
    max_adapter_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="memory cap over loaded adapters' weights (LRU unloaded beyond; 0 = none)"
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads of this process; 0 = torch's default (one per core)"
    )
    calibrate_fusion: bool = Field(
        True,
        description="hybrid fusion=auto (the default): each collection chooses its fusion from pseudo-queries drawn from its own documents, in the background, when it first holds 64 chunks and again each time it doubles; false: only the fallback (weighted, alpha 0.1) until calibrated by hand",
    )
    faiss_threads: int = Field(
        0,
        ge=0,
        description="OpenMP threads one dense search may use; 0 = one for fewer than 20 queries (FAISS gives each query one thread, the rest only spin up), FAISS's default (every core) for a batch",
    )

    # --- embedding engine limits ---
    default_mode: str = Field("mean", description="mode used when a request names none")
    max_texts_per_request: int = Field(
        1024, ge=1, description="texts one Embed request may carry (the client splits longer inputs)"
    )
    max_tokens: int = Field(512, ge=8, description="tokens per text, template included")
    max_batch_tokens: int = Field(16384, ge=64, description="padded tokens per forward")
    max_queued_texts: int = Field(
        16384,
        ge=1,
        description="texts in flight (Embed's texts and Search's queries, queued or being embedded) before a request is refused with RESOURCE_EXHAUSTED and a retry-after-ms hint",
    )
    max_queued_tokens: int = Field(
        2_097_152,
        ge=1,
        description="tokens of the texts in flight (as max_queued_texts), estimated at arrival as a text's UTF-8 bytes / 4 + 1, at most max_tokens each, before a request is refused with RESOURCE_EXHAUSTED and a retry-after-ms hint",
    )
    tp_start_layer: int = Field(2, description="Token Prepending: first layer (2..7 chosen on STS-B train)")
    tp_end_layer: int = Field(7, description="Token Prepending: last layer (inclusive)")
    tp_output_layer: int = Field(-1, description="Token Prepending: output layer (-1 final)")

    # --- embedding runtime ---
    embed_runtime: str = Field(
        "auto",
        description="how embedding forwards run: auto | eager | bf16_matmul | bf16_weights | compile | onnxruntime. auto = the runtime measured fastest with every vector within cosine 0.999 of fp32 on this hardware: bf16_weights on a CPU that computes bf16 natively (AVX512-BF16/AMX: every Linear multiplies in bf16 on a bf16 copy of its weights, the rest stays fp32; 1.44-1.73x eager fp32, every mode), onnxruntime on other CPUs (1.16-1.25x on an AVX2 CPU, cosine 1.0; the decoder is exported once into cache_dir/onnx), eager on GPU. bf16_matmul and bf16_weights load the model in float32 when dtype is auto. A forward a runtime cannot run (compile, onnxruntime: token prepending, output layers, adapters; any runtime: a model not in float32) runs eager, logged once per reason",
    )
    embed_pack: bool = Field(
        True,
        description="pack several texts into one row of a forward, each masked to its own tokens, so a batch of short texts of mixed lengths pays almost no padding (as text-embeddings-inference does); vectors as one text a row (fp32: cosine 1.0). Runs on eager, the bf16 runtimes and onnxruntime; compile runs one text a row",
    )

    # --- generation ---
    datastore_dirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="folders whose subfolders are datastores offered by name (read-only); <data_dir>/datastores is always searched and holds the ones AddToDatastore creates",
    )
    default_datastore: str = Field(
        "",
        description="datastore drafts come from when a request names none: a name or a datastore folder; empty = none",
    )
    max_new_tokens: int = Field(2048, ge=1, description="largest max_new_tokens a generation may ask for")
    max_concurrent_generations: int = Field(4, ge=1, description="generations in flight before RESOURCE_EXHAUSTED")
    shared_drafts: bool = Field(
        False,
        description="speculative drafts also from earlier outputs of this server (SuffixDecoding's global tree) and from each token's recycled top-k successors; off by default: on a 2-core AVX512-BF16 CPU they took code completion from 2.09x to 1.62x and RAG answers from 1.50x to 1.53x",
    )
    generate_dtype: str = Field(
        "float32",
        description="dtype generation runs in: float32 keeps speculative greedy identical to plain greedy (bf16 logits tie and round differently per path); auto = the model's dtype",
    )

    # --- batch indexing (jobs) ---
    broker_url: str = Field(
        "", description="Celery broker, e.g. redis://127.0.0.1:6379/0; empty = jobs run inside the server"
    )
    result_backend: str = Field("", description="Celery result backend; empty = the broker")
    job_chunk_docs: int = Field(64, ge=1, le=10000, description="documents per chunk (one task)")
    job_requeue_after_s: float = Field(
        600.0,
        gt=0,
        description="a dispatched chunk not done by then is dispatched again (lost message, dead worker); keep it above the slowest chunk",
    )
    broker_visibility_timeout_s: int = Field(
        3600,
        ge=1,
        description="the broker redelivers an unacknowledged task after this long; keep it above the slowest chunk",
    )
    worker_concurrency: int = Field(
        1, ge=1, description="`lodestar worker`: tasks run at once (each process loads the model)"
    )

    # --- retrieval limits ---
    max_queries_per_search: int = Field(
        1024, ge=1, description="queries one Search may carry (INVALID_ARGUMENT beyond)"
    )
    max_filters_per_search: int = Field(
        64, ge=1, le=512, description="metadata filters one Search or Answer may carry (INVALID_ARGUMENT beyond)"
    )
    max_inflight_documents: int = Field(
        20000,
        ge=1,
        description="documents of Upserts in flight (chunked, embedded or written) before one is refused with RESOURCE_EXHAUSTED and a retry-after-ms hint",
    )

    # --- collections on Milvus (backend milvus) ---
    milvus_uri: str = Field(
        "",
        description="Milvus that collections created with backend milvus live in: a Milvus Lite file path (./milvus.db, one process) or http(s)://host:19530 (Standalone or Distributed; every replica pointed at it serves the same collections); empty = backend milvus refused; needs `pip install lodestar[milvus]`",
    )
    milvus_only: bool = Field(
        False,
        description="a stateless query replica: refuse to create embedded (faiss) collections, whose files would live on this replica's disk alone (the chart's query replicas set it)",
    )
    milvus_token: SecretStr = Field(SecretStr(""), description="Milvus credentials: user:password or an API key")
    milvus_db: str = Field("", description="Milvus database; empty = its default")
    milvus_timeout_s: float = Field(30.0, gt=0, description="deadline of one call to Milvus (past it: UNAVAILABLE)")
    milvus_tls_ca: Path | None = Field(
        None, description="CA bundle (PEM) Milvus's certificate must chain to (an https:// URI); set = TLS"
    )
    milvus_tls_cert: Path | None = Field(None, description="client certificate (PEM) for Milvus with mTLS")
    milvus_tls_key: Path | None = Field(None, description="the private key (PEM) of milvus_tls_cert")
    milvus_tls_server_name: str = Field("", description="the name on Milvus's certificate, when the URI's host differs")

    # --- server behaviour ---
    max_concurrent_rpcs: int = Field(256, ge=1, description="RPCs in flight before RESOURCE_EXHAUSTED")
    work_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="how many nice steps below the event loop the work threads run (model forwards, FAISS, writes; Linux): the loop and gRPC's poller keep answering, and refusing, while the work saturates the cores; 0 = the same priority",
    )
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest gRPC message in either direction")
    grace_period_s: float = Field(
        10.0,
        ge=0,
        description="how long shutdown (SIGTERM) waits for in-flight RPCs; then the rest are cancelled and the process exits 0 within 2 s more",
    )
    data_dir: Path = Field(Path(".lodestar"), description="on-disk state (indexes, jobs)")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")

    # --- security ---
    tls_cert: Path | None = Field(
        None,
        description="this process's certificate (PEM chain): the server's (TLS on the gRPC port; re-read when the file changes), or a client's for mTLS",
    )
    tls_key: Path | None = Field(None, description="the private key (PEM) of tls_cert")
    tls_client_ca: Path | None = Field(
        None,
        description="server: CA bundle (PEM) that client certificates must chain to; set = mTLS, clients without one are refused at the handshake",
    )
    tls_ca: Path | None = Field(
        None, description="client/CLI/worker: CA bundle (PEM) the server's certificate must chain to; set = TLS"
    )
    tls: bool = Field(
        False, description="client/CLI/worker: TLS with the system's root CAs (implied by tls_ca or tls_cert)"
    )
    tokens_file: Path | None = Field(
        None,
        description="server: JSON list of {name, sha256, scopes} (`lodestar token create`); unset = no authentication (every RPC open); re-read when it changes",
    )
    token: SecretStr = Field(SecretStr(""), description="client/CLI: bearer token sent with every call")
    worker_token: SecretStr = Field(
        SecretStr(""),
        description="`lodestar worker`: bearer token (scope worker) it calls the server with; empty = token",
    )

    # --- observability ---
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus /metrics over HTTP on this port (on host); unset = no metrics; 0 picks a free one (tests)",
    )
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="`lodestar worker`: Prometheus /metrics port; unset = none"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line (log collectors)"
    )
    access_log: bool = Field(
        True,
        description="one log line per RPC (method, status, duration, peer, token name, request id) on logger lodestar.access",
    )
    otlp_endpoint: str = Field(
        "",
        description="OpenTelemetry collector (OTLP/gRPC, e.g. http://otel-collector:4317): spans for every RPC and Answer's stages; needs `pip install lodestar[otel]`; empty = no tracing",
    )

    def client_security(self, worker: bool = False) -> dict[str, Any]:
        """Client keyword arguments (tls, ca, cert, key, token) these settings give; a worker's token
        is worker_token, else token."""
        token = (self.worker_token.get_secret_value() if worker else "") or self.token.get_secret_value()
        return {"tls": self.tls, "ca": self.tls_ca, "cert": self.tls_cert, "key": self.tls_key, "token": token or None}

    @field_validator("only", "adapter_dirs", "datastore_dirs", "restore_dirs", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """Environment values are comma-separated lists: LODESTAR_ONLY=embed,retrieve."""
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("only")
    @classmethod
    def _known_services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}: valid are {', '.join(SERVICES)}")
        return value
