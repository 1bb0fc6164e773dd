"""Abstractive compression (RECOMP's abstractive compressor, zero-shot or with an adapter trained by
train/abstractive.py): the backbone writes a short
query-focused summary of the passages, or says that nothing in them is relevant.

Greedy through the chat template, output bounded by `max_new_tokens`; a reply that starts with the
"nothing relevant" marker becomes an empty context with the SKIP decision (the model's own
selective augmentation). Each summary comes with a faithfulness report: its content words that no
passage contains. A 135M model rarely admits it found nothing; it writes about the question
instead, so a summary whose share of supported words is below `min_support` is dropped too.
"""

from __future__ import annotations

import time
from typing import Any

from lodestar.backbone.chat import Message, chat_ids, generate
from lodestar.compress_ctx.faithfulness import faithfulness
from lodestar.compress_ctx.metrics import normalize_answer
from lodestar.compress_ctx.sentences import split_sentences
from lodestar.compress_ctx.types import AUGMENT, SKIP, CompressResult, join_passages
from lodestar.errors import InvalidInput

NOTHING = "NOTHING RELEVANT"
SYSTEM = "You summarise documents for a question. You only use facts stated in the documents."
INSTRUCTION = (
    "Write one or two short sentences with the facts from the documents that answer the question. "
    f"If the documents do not help answer it, reply exactly: {NOTHING}"
)


def messages(query: str, passages: list[str]) -> list[Message]:
    docs = "\n".join(f"Document {i + 1}: {p.strip()}" for i, p in enumerate(passages) if p.strip())
    user = f"{docs}\n\nQuestion: {' '.join(query.split())}\n\n{INSTRUCTION}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def is_nothing(reply: str) -> bool:
    """The model declined: the reply starts with the marker (any case/punctuation) or is empty."""
    return not reply.strip() or normalize_answer(reply).startswith(normalize_answer(NOTHING))


def tidy(text: str, cut: bool) -> str:
    """Stop at the first repeated sentence (greedy small models loop), and when generation was cut
    at the length bound, drop the unfinished last sentence if a finished one precedes it."""
    kept: list[str] = []
    for sent in split_sentences(text):
        if sent.text in kept:
            break
        kept.append(sent.text)
    if cut and len(kept) > 1 and not kept[-1].endswith((".", "!", "?", '"', "'")):
        kept.pop()
    return " ".join(kept)


class AbstractiveCompressor:
    def __init__(
        self, backbone: Any, *, max_new_tokens: int = 64, max_input_tokens: int = 2048, min_support: float = 0.5
    ) -> None:
        self.backbone = backbone
        self.min_support = min_support
        self.max_new_tokens = max_new_tokens
        self.max_input_tokens = max_input_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def compress_many(
        self,
        queries: list[str],
        passage_lists: list[list[str]],
        *,
        views: list[list[str]] | None = None,
        max_new_tokens: int = 0,
        batch_size: int = 4,
        adapter: str | None = None,
    ) -> list[CompressResult]:
        """Summaries for several (query, passages) at once: one batched greedy generation, with a
        LoRA `adapter` (`lodestar train compressor --kind abstractive`) or the base model.

        `views`: what the model reads instead of the passages (e.g. an extractive pre-selection);
        token counts and the faithfulness check still refer to the passages."""
        limit = max_new_tokens or self.max_new_tokens
        if limit <= 0:
            raise InvalidInput(f"max_new_tokens must be > 0; got {limit}")
        t0 = time.perf_counter()
        shown = views if views is not None else passage_lists
        prompts = [chat_ids(self.backbone, messages(q, ps)) for q, ps in zip(queries, shown)]
        # The summary is written after the prompt: both must fit the model's context, which may be
        # shorter than max_input_tokens + max_new_tokens (positions past it are garbage or a crash).
        context = int(self.backbone.max_tokens)
        for i, p in enumerate(prompts):
            if len(p) > self.max_input_tokens:
                raise InvalidInput(
                    f"request {i}: passages and prompt take {len(p)} tokens; the abstractive compressor's "
                    f"limit is max_input_tokens={self.max_input_tokens} (send fewer or shorter passages)"
                )
            if len(p) + limit > context:
                raise InvalidInput(
                    f"request {i}: passages and prompt take {len(p)} tokens; with max_new_tokens={limit} that "
                    f"exceeds the model's context of {context} tokens (send a shorter query or passages, or "
                    "ask for fewer new tokens)"
                )
        outs = generate(self.backbone, prompts, limit, batch_size=batch_size, adapter=adapter or None)
        per = (time.perf_counter() - t0) / max(1, len(prompts))
        results = []
        for g, ps in zip(outs, passage_lists):
            before = self.count_tokens(join_passages(ps))
            if is_nothing(g.text):
                results.append(
                    CompressResult(
                        "abstractive",
                        "",
                        [],
                        before,
                        0,
                        SKIP,
                        None,
                        None,
                        "the model found nothing relevant in the passages",
                        per,
                    )
                )
                continue
            text = tidy(g.text, cut=not g.stopped)
            if not text:
                results.append(
                    CompressResult(
                        "abstractive", "", [], before, 0, SKIP, None, None, "the model wrote no usable summary", per
                    )
                )
                continue
            after = self.count_tokens(text)
            faith = faithfulness(text, ps)
            support = faith.supported_ratio
            if support < self.min_support:
                results.append(
                    CompressResult(
                        "abstractive",
                        "",
                        [],
                        before,
                        0,
                        SKIP,
                        support,
                        self.min_support,
                        f"only {support:.0%} of the summary's content words occur in the passages "
                        f"(min_support={self.min_support:.0%}): no context",
                        per,
                        faith,
                    )
                )
                continue
            cut = "" if g.stopped else f" (cut at max_new_tokens={limit})"
            results.append(
                CompressResult(
                    "abstractive",
                    text,
                    [],
                    before,
                    after,
                    AUGMENT,
                    support,
                    self.min_support,
                    f"summary of {after} tokens{cut}",
                    per,
                    faith,
                )
            )
        return results

    def compress(
        self,
        query: str,
        passages: list[str],
        *,
        view: list[str] | None = None,
        max_new_tokens: int = 0,
        adapter: str | None = None,
    ) -> CompressResult:
        views = [view] if view is not None else None
        return self.compress_many([query], [passages], views=views, max_new_tokens=max_new_tokens, adapter=adapter)[0]
