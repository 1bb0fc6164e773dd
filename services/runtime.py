"""What a serving process holds: settings, health, and the engines once the model has loaded."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from lodestar.errors import Unavailable
from lodestar.services.admission import Backlog, Budget, estimate_tokens
from lodestar.services.settings import Settings
from lodestar.services.work import Tokens
from lodestar.telemetry import NOOP, Telemetry

if TYPE_CHECKING:
    from lodestar.backbone import Backbone
    from lodestar.compress_ctx.engine import CompressionEngine
    from lodestar.embed.engine import EmbeddingEngine
    from lodestar.generate.answer import AnswerPipeline
    from lodestar.generate.engine import GenerationEngine
    from lodestar.retrieve.backends.milvus_store import MilvusOptions
    from lodestar.retrieve.engine import RetrievalEngine
    from lodestar.retrieve.jobs import Dispatcher, JobManager, JobsConfig

RETRIEVE_SERVICE = "lodestar.retrieve.v1.RetrieveService"
# The warm-up forward (Runtime._warm_up): a batch of ordinary sentences, about 60 tokens each.
WARM_UP_TEXT = (
    "A retrieval server embeds the passages of a collection once, then answers each question by "
    "finding the passages whose vectors lie nearest to the question's own vector."
)
WARM_UP_TEXTS = 8

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _celery_dispatcher(config: JobsConfig) -> Dispatcher:
    """The JobManager's remote dispatcher when a broker is set (Celery is imported only then)."""
    from lodestar.services.worker import CeleryDispatcher

    return CeleryDispatcher(config)


class Runtime:
    def __init__(self, settings: Settings, service_names: list[str], freeze_after_load: bool = False) -> None:
        self.settings = settings
        self.service_names = service_names  # fully-qualified gRPC names reported by health
        self.health = HealthServicer()
        self._engine: EmbeddingEngine | None = None
        self._retrieval: RetrievalEngine | None = None
        self._compression: CompressionEngine | None = None
        self._generation: GenerationEngine | None = None
        self._jobs: JobManager | None = None
        self._watchdog: asyncio.Task | None = None
        self.serves: set[str] = set()  # short names (embed, retrieve, ...) the server factory registered
        self._load_error: str | None = None
        self.freeze_after_load = freeze_after_load  # lodestar serve: what loading built, out of full GC passes
        self._shutting_down = False
        self.loaded = asyncio.Event()
        self.load_task: asyncio.Future | None = None  # the background model load (kept referenced)
        self.work_pool: ThreadPoolExecutor | None = None  # the loop's executor (create_server), joined at exit
        self.load_seconds: float | None = None  # how long the model and engines took to load
        self.telemetry: Telemetry = NOOP  # handed to every engine once built (metrics, tracing)
        self._on_close: list[Callable[[], None]] = []
        self.tokens = Tokens()  # the cancellation tokens of blocking calls in flight (services/work.py)
        # Admission control, by kind of work (services/admission.py). Texts to embed (counted in
        # tokens) and documents to index queue for the same backbone: a request's deadline check
        # waits for both. The count of texts is the same work as its tokens, so it waits for its own.
        backbone = Backlog()
        self.budgets = {
            "texts": Budget("texts", settings.max_queued_texts, "max_queued_texts"),
            "tokens": Budget("tokens (estimated)", settings.max_queued_tokens, "max_queued_tokens", backbone),
            "documents": Budget("documents", settings.max_inflight_documents, "max_inflight_documents", backbone),
        }

    @contextmanager
    def admit_texts(self, texts: Sequence[str], context: grpc.aio.ServicerContext | None) -> Iterator[None]:
        """Hold both budgets of texts to embed (Embed's texts, Search's queries): their number and their
        tokens, estimated at arrival (services/admission.py's estimate_tokens)."""
        with (
            self.admit("texts", len(texts), context),
            self.admit("tokens", estimate_tokens(texts, self.settings.max_tokens), context),
        ):
            yield

    def admit(self, kind: str, n: int, context: grpc.aio.ServicerContext | None) -> AbstractContextManager[None]:
        """Hold `n` units of the `kind` budget for a call (refused at once past it, or when the call's
        deadline would pass before the work ahead of it is done); UNAVAILABLE once shutting down."""
        if self._shutting_down:
            raise Unavailable("the server is shutting down; retry on another replica")
        return self.budgets[kind].admit(n, context.time_remaining() if context is not None else None)

    async def set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    def _check_ready(self) -> None:
        if self._shutting_down:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._load_error:
            raise Unavailable(f"the model failed to load: {self._load_error}")
        if self._engine is None:
            raise Unavailable("the model is still loading; grpc.health.v1 reports SERVING once it is ready")

    def embed_engine(self) -> EmbeddingEngine:
        self._check_ready()
        assert self._engine is not None
        return self._engine

    def retrieve_engine(self) -> RetrievalEngine:
        self._check_ready()
        assert self._retrieval is not None
        return self._retrieval

    def compress_engine(self) -> CompressionEngine:
        self._check_ready()
        assert self._compression is not None
        return self._compression

    def generate_engine(self) -> GenerationEngine:
        self._check_ready()
        assert self._generation is not None
        return self._generation

    def job_manager(self) -> JobManager:
        self._check_ready()
        assert self._jobs is not None
        return self._jobs

    def answer_pipeline(self) -> AnswerPipeline:
        """Answer composes the retrieval, compression and generation engines of this process."""
        from lodestar.generate.answer import AnswerPipeline

        self._check_ready()
        missing = [name for name in ("retrieve", "generate") if name not in self.serves]
        if missing or self._retrieval is None or self._compression is None or self._generation is None:
            raise Unavailable(
                f"Answer needs the retrieve, compress and generate services in one process; this one serves "
                f"{', '.join(sorted(self.serves))} (start it with --only retrieve,compress,generate or without --only)"
            )
        return AnswerPipeline(self._retrieval, self._compression, self._generation, self.telemetry)

    async def refresh_collection_health(self) -> None:
        """Per-collection health (`lodestar.retrieve.v1.RetrieveService/<name>`): NOT_SERVING for a
        collection whose snapshot failed verification, so a balancer can route around it."""
        if self._retrieval is None:
            return
        for name, status in self._retrieval.status().items():
            await self.health.set(f"{RETRIEVE_SERVICE}/{name}", SERVING if status == "ok" else NOT_SERVING)

    async def load(self, backbone: Backbone | None = None) -> None:
        """Load the model off the event loop, then report SERVING."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            self._engine = await loop.run_in_executor(None, self._build_engine, backbone)
            await loop.run_in_executor(None, self._warm_up, self._engine)
            if self.serves & {"retrieve", "index"}:
                self._retrieval = await loop.run_in_executor(None, self._build_retrieval, self._engine)
            if "index" in self.serves:
                assert self._retrieval is not None  # built above: "index" is in the set it was built for
                self._jobs = await loop.run_in_executor(None, self._build_jobs, self._retrieval, self._engine)
                self._watchdog = asyncio.ensure_future(self._watch_jobs())
            if self.serves & {"compress", "generate"}:
                self._compression = await loop.run_in_executor(None, self._build_compression, self._engine)
            if "generate" in self.serves:
                self._generation = await loop.run_in_executor(None, self._build_generation, self._engine)
        except Exception as exc:
            self._load_error = str(exc)
            log.exception("model load failed")
            return
        finally:
            self.loaded.set()
        self.load_seconds = time.perf_counter() - start
        if self.freeze_after_load:
            # The model's modules, the tokenizer and the collections live as long as the process; a
            # full collection scanning them all stopped every thread for 85-215 ms under load (the
            # overload benchmark's refusal tail). Frozen, full passes scan only what came after.
            gc.collect()
            gc.freeze()
        self._attach_telemetry()
        await self.set_health(SERVING)
        await self.refresh_collection_health()
        log.info("model %s loaded; serving", self._engine.backbone.model_id)

    def _attach_telemetry(self) -> None:
        """Give every engine built the process's telemetry (a no-op unless metrics or tracing are on)."""
        if self._engine is not None:
            self._engine.batcher.telemetry = self.telemetry
        for engine in (self._retrieval, self._compression, self._generation):
            if engine is not None:
                engine.telemetry = self.telemetry

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run `fn` when the runtime closes (the metrics server, the tracer's exporter)."""
        self._on_close.append(fn)

    def _warm_up(self, engine: EmbeddingEngine) -> None:
        """Two forwards before serving: the first pays the runtime's first-call costs, the second's
        time seeds the budgets' seconds per unit, so a request whose deadline the queue would outlast
        is refused from the first burst on (unseeded, a cold server admitted a whole burst that then
        ran past its deadlines). Small batches cost more per token than served ones: the seed errs
        towards refusing, and finished requests correct it."""
        from lodestar.retrieve.types import CollectionConfig

        texts = [WARM_UP_TEXT] * min(WARM_UP_TEXTS, engine.config.max_texts_per_request)
        try:
            engine.embed(texts)  # first-call costs (an ONNX export, allocations): untimed
            start = time.perf_counter()
            engine.embed(texts)
        except Exception as exc:  # a server configured so tightly the warm-up does not fit still serves
            log.warning("warm-up forward failed (%s); the budgets measure from the first requests instead", exc)
            return
        seconds = time.perf_counter() - start
        self.budgets["texts"].seed(seconds / len(texts))
        per_token = seconds / estimate_tokens(texts, self.settings.max_tokens)
        self.budgets["tokens"].seed(per_token)
        # a document as one full chunk of the default size (and its write); unseeded,
        # a cold server admitted max_inflight_documents at once, most of them past their deadlines
        self.budgets["documents"].seed(per_token * CollectionConfig.chunk_tokens)
        log.info("warm-up forward: %.0f ms for %d texts", 1000 * seconds, len(texts))

    def _build_engine(self, backbone: Backbone | None) -> EmbeddingEngine:
        from lodestar.backbone import BackboneConfig, load_backbone
        from lodestar.backbone.devices import resolve_device
        from lodestar.embed.engine import EmbeddingEngine, EngineConfig
        from lodestar.embed.modes import TokenPrepend
        from lodestar.embed.runtime import model_dtype

        s = self.settings
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        if backbone is None:
            backbone = load_backbone(
                BackboneConfig(
                    model=s.model,
                    dtype=model_dtype(s.embed_runtime, s.dtype, resolve_device(s.device)),
                    device=s.device,
                    cache_dir=s.cache_dir,
                    adapter_dirs=tuple(s.adapter_dirs),
                    max_resident_adapters=s.max_resident_adapters,
                    max_adapter_bytes=s.max_adapter_bytes,
                    adapter_paths=s.adapter_paths,
                )
            )
        return EmbeddingEngine(
            backbone,
            EngineConfig(
                default_mode=s.default_mode,
                max_texts_per_request=s.max_texts_per_request,
                max_tokens=s.max_tokens,
                max_batch_tokens=s.max_batch_tokens,
                max_queued_texts=s.max_queued_texts,
                token_prepend=TokenPrepend(s.tp_start_layer, s.tp_end_layer, s.tp_output_layer),
                runtime=s.embed_runtime,
                runtime_cache=s.cache_dir,
                pack=s.embed_pack,
            ),
        )

    def _build_retrieval(self, engine: EmbeddingEngine) -> RetrievalEngine:
        from lodestar.retrieve.engine import RetrievalEngine
        from lodestar.retrieve.faiss_runtime import use_gpu

        use_gpu(str(engine.backbone.device))  # LODESTAR_DEVICE=cuda: dense searches on that GPU, where FAISS can
        return RetrievalEngine(
            Path(self.settings.data_dir) / "collections",
            engine,
            faiss_threads=self.settings.faiss_threads,
            restore_dirs=tuple(self.settings.restore_dirs) or (Path(self.settings.data_dir),),
            milvus=milvus_options(self.settings),
            milvus_only=self.settings.milvus_only,
            max_queries=self.settings.max_queries_per_search,
            max_filters=self.settings.max_filters_per_search,
            calibrate=self.settings.calibrate_fusion,
        )

    def _build_jobs(self, retrieval: RetrievalEngine, engine: EmbeddingEngine) -> JobManager:
        from lodestar.retrieve.jobs import JobManager, JobsConfig

        s = self.settings
        return JobManager(
            retrieval,
            engine,
            JobsConfig(
                data_dir=Path(s.data_dir),
                chunk_docs=s.job_chunk_docs,
                requeue_after_s=s.job_requeue_after_s,
                broker_url=s.broker_url,
                result_backend=s.result_backend,
                visibility_timeout_s=s.broker_visibility_timeout_s,
            ),
            _celery_dispatcher,
        )

    async def _watch_jobs(self) -> None:
        """Re-dispatch what needs it: chunks left pending (broker was down) and chunks whose
        message or worker was lost (queued longer than job_requeue_after_s)."""
        interval = min(5.0, self.settings.job_requeue_after_s / 4)
        loop = asyncio.get_running_loop()
        while not self._shutting_down:
            await asyncio.sleep(interval)
            if self._shutting_down:
                return
            if self._jobs is not None:
                try:
                    await loop.run_in_executor(None, self._jobs.dispatch_due)
                except Exception:
                    log.exception("job dispatch round failed")

    def _build_compression(self, engine: EmbeddingEngine) -> CompressionEngine:
        from lodestar.compress_ctx.engine import CompressionEngine

        return CompressionEngine(engine.backbone, engine)

    def _build_generation(self, engine: EmbeddingEngine) -> GenerationEngine:
        from lodestar.generate.decoder import DecoderConfig
        from lodestar.generate.drafter import DraftConfig
        from lodestar.generate.engine import GenerateConfig, GenerationEngine

        s = self.settings
        return GenerationEngine(
            engine.backbone,
            GenerateConfig(
                writable_dir=Path(s.data_dir) / "datastores",
                datastore_dirs=tuple(s.datastore_dirs),
                default_datastore=s.default_datastore,
                max_concurrent=s.max_concurrent_generations,
                dtype=s.generate_dtype,
                decoder=DecoderConfig(
                    max_new_tokens=s.max_new_tokens,
                    draft=DraftConfig(history=s.shared_drafts, recycle=s.shared_drafts),
                ),
            ),
        )

    async def begin_shutdown(self) -> None:
        """Health goes NOT_SERVING for good; new requests get UNAVAILABLE."""
        self._shutting_down = True
        await self.health.enter_graceful_shutdown()

    def close(self) -> None:
        self._shutting_down = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._jobs is not None:
            self._jobs.close()
        if self._retrieval is not None:
            self._retrieval.close()
        if self._engine is not None:
            self._engine.close()
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            try:
                fn()
            except Exception:
                log.exception("closing %r failed", fn)


def milvus_options(s: Settings) -> MilvusOptions | None:
    """How the engine reaches Milvus (LODESTAR_MILVUS_*); None without a URI (backend milvus refused)."""
    from lodestar.retrieve.backends.milvus_store import MilvusOptions

    if not s.milvus_uri:
        return None
    return MilvusOptions(
        uri=s.milvus_uri,
        token=s.milvus_token.get_secret_value(),
        db_name=s.milvus_db,
        timeout_s=s.milvus_timeout_s,
        tls_ca_file=str(s.milvus_tls_ca or ""),
        tls_cert_file=str(s.milvus_tls_cert or ""),
        tls_key_file=str(s.milvus_tls_key or ""),
        tls_server_name=s.milvus_tls_server_name,
    )
