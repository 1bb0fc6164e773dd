"""GenerateService on the client side (the mirror of lodestar.services.generate)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lodestar.generate.v1 import generate_pb2 as gpb
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services.client.retrieve import hit
from lodestar.services.client.types import AnswerContext, Chunk, Datastore, Generated, GenerationStats
from lodestar.services.wire import name_to_enum

DECODING = ("max_new_tokens", "stop", "temperature", "top_p", "seed", "speculative", "datastore", "self_draft_layers")


def decoding_options(**kw: Any) -> gpb.DecodingOptions:
    """max_new_tokens, stop, temperature, top_p, seed, speculative, datastore, self_draft_layers -> DecodingOptions."""
    unknown = set(kw) - set(DECODING)
    if unknown:
        raise TypeError(f"unknown decoding option(s) {sorted(unknown)}; valid are {', '.join(DECODING)}")
    stop = kw.pop("stop", None)
    return gpb.DecodingOptions(stop=[stop] if isinstance(stop, str) else list(stop or ()), **kw)


def generate_request(
    prompt: str | list[int], passages: list[str] | None, chat: bool, **decoding: Any
) -> gpb.GenerateRequest:
    text, ids = (prompt, []) if isinstance(prompt, str) else ("", prompt)
    return gpb.GenerateRequest(
        prompt=text,
        prompt_token_ids=ids,
        options=decoding_options(**decoding),
        passages=passages or [],
        chat=chat,
    )


def answer_request(
    question: str,
    collection: str,
    search: rpb.SearchOptions,
    *,
    compression: str,
    budget_tokens: int | None,
    selective: bool,
    threshold: float | None,
    **decoding: Any,
) -> gpb.AnswerRequest:
    return gpb.AnswerRequest(
        question=question,
        collection=collection,
        search=search,
        compressor=name_to_enum(gpb.Compression, compression, "compression"),
        budget_tokens=budget_tokens,
        selective=selective,
        threshold=threshold,
        options=decoding_options(**decoding),
    )


def stats(s: gpb.DecodeStats) -> GenerationStats:
    return GenerationStats(
        prompt_tokens=s.prompt_tokens,
        generated_tokens=s.generated_tokens,
        steps=s.steps,
        draft_tokens=s.draft_tokens,
        accepted_draft_tokens=s.accepted_draft_tokens,
        mean_accepted_tokens=round(s.mean_accepted_tokens, 4),
        prefill_s=round(s.prefill_s, 4),
        decode_s=round(s.decode_s, 4),
        tokens_per_s=round(s.tokens_per_s, 3),
    )


def chunk(c: Any) -> Chunk:
    """A GenerateChunk, or the text part of an AnswerChunk."""
    token_ids = list(getattr(c, "token_ids", ()))
    return Chunk(c.text, token_ids, c.finish_reason, stats(c.stats) if c.finish_reason else None)


def generate_items(c: gpb.GenerateChunk) -> list[Chunk]:
    return [chunk(c)]


def answer_items(c: gpb.AnswerChunk, first: bool) -> list[AnswerContext | Chunk]:
    """The first message carries the AnswerContext; any message may carry text."""
    out: list[AnswerContext | Chunk] = []
    if first:
        sources = [
            hit(
                rpb.Hit(
                    id=s.id, score=s.score, chunk=s.chunk, text=s.text, chunk_text=s.text, metadata_json=s.metadata_json
                )
            )
            for s in c.sources
        ]
        out.append(AnswerContext(sources, c.context, c.decision, c.context_tokens, c.passage_tokens))
    if c.text or c.finish_reason:
        out.append(chunk(c))
    return out


def collect(items: Iterable[AnswerContext | Chunk]) -> Generated:
    """A whole generation from its streamed items (an Answer's context kept aside)."""
    text: list[str] = []
    ids: list[int] = []
    last, context, n = Chunk("", []), None, 0
    for item in items:
        if isinstance(item, AnswerContext):
            context = item
            continue
        text.append(item.text)
        ids.extend(item.token_ids)
        last, n = item, n + 1
    return Generated("".join(text), ids, last.finish_reason, last.stats, context=context, chunks=n)


def datastore(d: gpb.DatastoreInfo) -> Datastore:
    return Datastore(
        name=d.name, tokens=d.tokens, documents=d.documents, segments=d.segments, path=d.path, is_default=d.is_default
    )


def add_requests(name: str, texts: Iterable[str], batch: int, compact: bool) -> Iterator[gpb.AddToDatastoreRequest]:
    """The texts in batches; at least one message, so an empty call still names the datastore."""
    buf: list[str] = []
    sent = False
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            yield gpb.AddToDatastoreRequest(name=name, texts=buf, compact=compact)
            buf, sent = [], True
    if buf or not sent:
        yield gpb.AddToDatastoreRequest(name=name, texts=buf, compact=compact)
