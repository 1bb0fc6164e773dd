"""GenerateService: its servicer and its proto conversion. Generate and Answer stream from a worker
thread; cancelling the call stops the work at the next step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc

from lodestar.errors import InvalidInput
from lodestar.generate import types as gt
from lodestar.generate.answer import DEFAULT_PARAMS, AnswerRequest, AnswerStart
from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.generate.v1 import generate_pb2_grpc as gpb_grpc
from lodestar.services.retrieve import search_kwargs
from lodestar.services.runtime import Runtime
from lodestar.services.streaming import iterate_in_thread
from lodestar.services.wire import chosen, set_fields, to_json
from lodestar.services.work import work_pool

_DECODING_OPTIONAL = ("max_new_tokens", "temperature", "top_p", "seed", "speculative", "self_draft_layers")
_ANSWER_OPTIONAL = ("budget_tokens", "threshold")


def params_from_pb(o: gpb.DecodingOptions, base: gt.GenerationParams, chat: bool = False) -> gt.GenerationParams:
    """`base` with the request's set decoding options (unset = the engine's default for this RPC)."""
    return replace(base, **set_fields(o, _DECODING_OPTIONAL), stop=tuple(o.stop), chat=chat)


def generate_kwargs(r: gpb.GenerateRequest) -> dict[str, Any]:
    """Keyword arguments of GenerationEngine.stream."""
    if r.prompt and r.prompt_token_ids:
        raise InvalidInput("give prompt or prompt_token_ids, not both")
    return {
        "prompt": list(r.prompt_token_ids) if r.prompt_token_ids else r.prompt,
        "params": params_from_pb(r.options, gt.GenerationParams(), chat=r.chat),
        "passages": list(r.passages) or None,
        "datastore": r.options.datastore,
    }


def answer_from_pb(r: gpb.AnswerRequest) -> AnswerRequest:
    search = search_kwargs(r, "search")
    search.pop("include_text", None)  # Answer always reads the passages' text
    kw = set_fields(r, _ANSWER_OPTIONAL) | search
    if compression := chosen(gpb.Compression, r.compressor, r.compression, "compressor"):
        kw["compression"] = compression
    return AnswerRequest(
        question=r.question,
        collection=r.collection,
        selective=r.selective,
        params=params_from_pb(r.options, DEFAULT_PARAMS),
        datastore=r.options.datastore,
        **kw,
    )


def stats_to_pb(s: gt.DecodeStats) -> gpb.DecodeStats:
    return gpb.DecodeStats(
        prompt_tokens=s.prompt_tokens,
        generated_tokens=s.generated_tokens,
        steps=s.steps,
        draft_tokens=s.draft_tokens,
        accepted_draft_tokens=s.accepted_draft_tokens,
        mean_accepted_tokens=s.mean_accepted_tokens,
        prefill_s=s.prefill_s,
        decode_s=s.decode_s,
        tokens_per_s=s.as_dict()["tokens_per_s"],
    )


def chunk_to_pb(c: gt.GenerationChunk) -> gpb.GenerateChunk:
    return gpb.GenerateChunk(
        text=c.text,
        token_ids=c.token_ids,
        finish_reason=c.finish_reason or "",
        stats=stats_to_pb(c.stats) if c.finish_reason and c.stats is not None else None,
    )


def answer_chunk_to_pb(item: AnswerStart | gt.GenerationChunk) -> gpb.AnswerChunk:
    """AnswerStart -> the first message (sources, context); GenerationChunk -> a text message."""
    if isinstance(item, gt.GenerationChunk):
        g = chunk_to_pb(item)
        return gpb.AnswerChunk(
            text=g.text, finish_reason=g.finish_reason, stats=g.stats if g.HasField("stats") else None
        )
    return gpb.AnswerChunk(
        sources=[
            gpb.Source(
                id=h.id, score=h.score, chunk=h.chunk, text=h.chunk_text or h.text, metadata_json=to_json(h.metadata)
            )
            for h in item.sources
        ],
        context=item.context,
        decision=item.decision,
        context_tokens=item.context_tokens,
        passage_tokens=item.passage_tokens,
    )


def datastore_to_pb(d: Any) -> gpb.DatastoreInfo:
    return gpb.DatastoreInfo(
        name=d.name, tokens=d.tokens, documents=d.documents, segments=d.segments, path=d.path, is_default=d.is_default
    )


class GenerateServicer(gpb_grpc.GenerateServiceServicer):
    SERVICE = gpb.DESCRIPTOR.services_by_name["GenerateService"]

    @staticmethod
    def add_to_server(servicer: GenerateServicer, server: grpc.aio.Server) -> None:
        gpb_grpc.add_GenerateServiceServicer_to_server(servicer, server)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Generations hold a thread for their whole length: their own pool, so that they never
        # starve the default executor the other services' calls run on. The engine refuses more
        # than max_concurrent_generations; one spare thread runs the refusals.
        self._pool = work_pool(
            runtime.settings.work_nice, runtime.settings.max_concurrent_generations + 1, name="lodestar-gen"
        )
        runtime.on_close(lambda: self._pool.shutdown(wait=False, cancel_futures=True))

    async def Generate(
        self, request: gpb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gpb.GenerateChunk]:
        engine = self.runtime.generate_engine()
        kwargs = generate_kwargs(request)
        token = self.runtime.tokens.new(context)
        try:
            async for chunk in iterate_in_thread(
                lambda cancel: engine.stream(cancel=cancel, **kwargs), self._pool, token
            ):
                yield chunk_to_pb(chunk)
        finally:
            self.runtime.tokens.done(token)

    async def Answer(
        self, request: gpb.AnswerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gpb.AnswerChunk]:
        pipeline = self.runtime.answer_pipeline()
        req = answer_from_pb(request)
        token = self.runtime.tokens.new(context)
        try:
            async for item in iterate_in_thread(lambda cancel: pipeline.answer(req, cancel), self._pool, token):
                yield answer_chunk_to_pb(item)
        finally:
            self.runtime.tokens.done(token)

    async def ListDatastores(
        self, request: gpb.ListDatastoresRequest, context: grpc.aio.ServicerContext
    ) -> gpb.ListDatastoresResponse:
        engine = self.runtime.generate_engine()
        stores = await asyncio.get_running_loop().run_in_executor(None, engine.list_datastores)
        return gpb.ListDatastoresResponse(datastores=[datastore_to_pb(d) for d in stores])

    async def AddToDatastore(
        self, requests: AsyncIterator[gpb.AddToDatastoreRequest], context: grpc.aio.ServicerContext
    ) -> gpb.DatastoreInfo:
        """Collect the whole stream, then write one segment: a broken upload changes nothing."""
        engine = self.runtime.generate_engine()
        name, compact, chars = "", False, 0
        texts: list[str] = []
        async for req in requests:
            if req.name and name and req.name != name:
                raise InvalidInput(
                    f"one AddToDatastore call writes one datastore; got {name[:200]!r} then {req.name[:200]!r}"
                )
            name = name or req.name
            texts.extend(req.texts)
            compact = compact or req.compact
            if len(texts) > engine.config.max_add_texts:
                raise InvalidInput(
                    f"more than max_add_texts={engine.config.max_add_texts} texts in one call; split the upload"
                )
            chars += sum(len(t) for t in req.texts)
            if chars > engine.config.max_add_chars:  # refused while streaming, before the rest is held
                raise InvalidInput(
                    f"more than max_add_chars={engine.config.max_add_chars} characters in one call; split the upload"
                )
        info = await asyncio.get_running_loop().run_in_executor(None, engine.add_texts, name, texts, compact)
        return datastore_to_pb(info)
