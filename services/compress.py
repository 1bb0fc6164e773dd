"""CompressService: its servicer and its proto conversion. The blocking engine call runs off the event loop."""

from __future__ import annotations

from typing import Any

import grpc

from lodestar.compress_ctx import types as ct
from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.compress_ctx.v1 import compress_pb2_grpc as cpb_grpc
from lodestar.embed.types import EmbedOptions
from lodestar.services.runtime import Runtime
from lodestar.services.wire import chosen, set_fields
from lodestar.services.work import run_blocking

_OPTIONAL = ("budget_tokens", "budget_ratio", "top_n", "threshold", "max_new_tokens")


def scorer_from_pb(o: cpb.ScorerOptions) -> EmbedOptions | None:
    """Scorer options of a request; None (the compressor's default) when none is set."""
    if not (o.mode or o.prompt or o.instruction or o.adapter):
        return None
    return EmbedOptions(mode=o.mode, prompt=o.prompt, instruction=o.instruction, adapter=o.adapter)


def compress_kwargs(r: cpb.CompressRequest) -> dict[str, Any]:
    """Keyword arguments of CompressionEngine.compress besides query and passages; unset = its defaults."""
    sentence = scorer_from_pb(r.sentence_options)
    query = scorer_from_pb(r.query_options) if r.HasField("query_options") else None
    kw = set_fields(r, _OPTIONAL)
    if method := chosen(cpb.Method, r.compressor, r.method, "compressor"):
        kw["method"] = method
    if order := chosen(cpb.Order, r.sentence_order, r.order, "sentence_order"):
        kw["order"] = order
    return kw | {
        "selective": r.selective,
        "options": sentence,
        "query_options": query if query is not None else sentence,
        "adapter": r.adapter,
    }


def response_to_pb(res: ct.CompressResult) -> cpb.CompressResponse:
    f = res.faithfulness
    return cpb.CompressResponse(
        text=res.text,
        spans=[cpb.Span(passage=s.passage, start=s.start, end=s.end, score=s.score) for s in res.spans],
        tokens_before=res.tokens_before,
        tokens_after=res.tokens_after,
        empty=res.decision == ct.SKIP,
        decision=res.decision,
        verdict=cpb.Decision.Value("DECISION_" + res.decision.upper()),
        score=res.score,
        threshold=res.threshold,
        reason=res.reason,
        method=res.method,
        compressor=cpb.Method.Value("METHOD_" + res.method.upper()),
        compression_rate=res.compression_rate,
        faithfulness=cpb.Faithfulness(
            content_words=f.content_words,
            unsupported_words=f.unsupported_words,
            unsupported=f.unsupported,
            supported_ratio=f.supported_ratio,
        )
        if f is not None
        else None,
        seconds=res.seconds,
    )


def info_to_pb(info: dict[str, Any], default_budget_ratio: float) -> cpb.InfoResponse:
    return cpb.InfoResponse(
        methods=info["methods"],
        orders=info["orders"],
        default_mode=info["default_options"]["mode"],
        threshold=info["threshold"],
        max_passages=info["max_passages"],
        max_input_tokens=info["max_input_tokens"],
        max_abstractive_input_tokens=info["max_abstractive_input_tokens"],
        max_summary_tokens=info["max_summary_tokens"],
        default_budget_ratio=default_budget_ratio,
    )


class CompressServicer(cpb_grpc.CompressServiceServicer):
    SERVICE = cpb.DESCRIPTOR.services_by_name["CompressService"]

    @staticmethod
    def add_to_server(servicer: CompressServicer, server: grpc.aio.Server) -> None:
        cpb_grpc.add_CompressServiceServicer_to_server(servicer, server)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Compress(self, request: cpb.CompressRequest, context: grpc.aio.ServicerContext) -> cpb.CompressResponse:
        engine = self.runtime.compress_engine()
        kwargs = compress_kwargs(request)
        result = await run_blocking(
            self.runtime.tokens, context, lambda: engine.compress(request.query, list(request.passages), **kwargs)
        )
        return response_to_pb(result)

    async def Info(self, request: cpb.InfoRequest, context: grpc.aio.ServicerContext) -> cpb.InfoResponse:
        engine = self.runtime.compress_engine()
        return info_to_pb(engine.info(), engine.config.default_budget_ratio)
