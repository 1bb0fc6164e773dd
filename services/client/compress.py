"""CompressService on the client side (the mirror of lodestar.services.compress)."""

from __future__ import annotations

from typing import Any

from lodestar.compress_ctx import types as ct
from lodestar.compress_ctx.v1 import compress_pb2 as cpb
from lodestar.services.client.types import CompressInfo
from lodestar.services.wire import name_to_enum

OPTIONS = (
    "method",
    "budget_tokens",
    "budget_ratio",
    "top_n",
    "order",
    "selective",
    "threshold",
    "max_new_tokens",
    "sentence_options",
    "query_options",
    "adapter",
)


def request(query: str, passages: list[str], **kw: Any) -> cpb.CompressRequest:
    unknown = set(kw) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown compression option(s) {sorted(unknown)}; valid are {', '.join(OPTIONS)}")

    def scorer(o: dict[str, str] | None) -> cpb.ScorerOptions | None:
        return cpb.ScorerOptions(**o) if o else None

    return cpb.CompressRequest(
        query=query,
        passages=passages,
        compressor=name_to_enum(cpb.Method, kw.get("method") or "", "method"),
        budget_tokens=kw.get("budget_tokens"),
        budget_ratio=kw.get("budget_ratio"),
        top_n=kw.get("top_n"),
        sentence_order=name_to_enum(cpb.Order, kw.get("order") or "", "order"),
        selective=bool(kw.get("selective")),
        threshold=kw.get("threshold"),
        max_new_tokens=kw.get("max_new_tokens"),
        sentence_options=scorer(kw.get("sentence_options")),
        query_options=scorer(kw.get("query_options")),
        adapter=kw.get("adapter") or "",
    )


def result(r: cpb.CompressResponse) -> ct.CompressResult:
    f = r.faithfulness if r.HasField("faithfulness") else None
    return ct.CompressResult(
        method=r.method,
        text=r.text,
        spans=[ct.Span(s.passage, s.start, s.end, s.score) for s in r.spans],
        tokens_before=r.tokens_before,
        tokens_after=r.tokens_after,
        decision=r.decision,
        score=r.score if r.HasField("score") else None,
        threshold=r.threshold if r.HasField("threshold") else None,
        reason=r.reason,
        seconds=r.seconds,
        faithfulness=ct.Faithfulness(f.content_words, f.unsupported_words, list(f.unsupported))
        if f is not None
        else None,
    )


def info(r: cpb.InfoResponse) -> CompressInfo:
    return CompressInfo(
        methods=list(r.methods),
        orders=list(r.orders),
        default_mode=r.default_mode,
        threshold=r.threshold,
        max_passages=r.max_passages,
        max_input_tokens=r.max_input_tokens,
        max_abstractive_input_tokens=r.max_abstractive_input_tokens,
        max_summary_tokens=r.max_summary_tokens,
        default_budget_ratio=r.default_budget_ratio,
    )
