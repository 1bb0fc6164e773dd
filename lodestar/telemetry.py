"""The hook engines report what they did through, without importing a metrics or tracing library.

Engines hold a `Telemetry` (the no-op `NOOP` unless the server gives them another) and call it where
something worth counting happens; services/observability/ implements it with Prometheus metrics and
OpenTelemetry spans. Calls are cheap and never raise into the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Protocol


class Telemetry(Protocol):
    """What engines report: one method per event, plain numbers only."""

    def embed_batch(self, texts: int, tokens: int, padded_tokens: int) -> None:
        """One embedding forward ran: its texts, real tokens and padded tokens (texts x longest)."""

    def searched(self, retriever: str, seconds: float) -> None:
        """One Search (all its queries) took `seconds` with this retriever (dense | sparse | hybrid)."""

    def compressed(self, tokens_in: int, tokens_out: int) -> None:
        """One compression read `tokens_in` passage tokens and kept `tokens_out`."""

    def generated(self, tokens: int) -> None:
        """A generation step produced `tokens` tokens."""

    def verified(self, tokens_per_forward: Sequence[int]) -> None:
        """A generation ended; tokens each of its verification forwards produced (1 = no draft accepted)."""

    def stage(self, name: str) -> AbstractContextManager[object]:
        """A span of work within a request (Answer: retrieve, compress, generate)."""
        ...


class NoTelemetry:
    """Reports nowhere: what engines hold unless the server sets one."""

    def embed_batch(self, texts: int, tokens: int, padded_tokens: int) -> None:
        pass

    def searched(self, retriever: str, seconds: float) -> None:
        pass

    def compressed(self, tokens_in: int, tokens_out: int) -> None:
        pass

    def generated(self, tokens: int) -> None:
        pass

    def verified(self, tokens_per_forward: Sequence[int]) -> None:
        pass

    def stage(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()


NOOP: Telemetry = NoTelemetry()


class Fanout:
    """Several telemetries as one (metrics and tracing both on)."""

    def __init__(self, *parts: Telemetry) -> None:
        self.parts = parts

    def embed_batch(self, texts: int, tokens: int, padded_tokens: int) -> None:
        for p in self.parts:
            p.embed_batch(texts, tokens, padded_tokens)

    def searched(self, retriever: str, seconds: float) -> None:
        for p in self.parts:
            p.searched(retriever, seconds)

    def compressed(self, tokens_in: int, tokens_out: int) -> None:
        for p in self.parts:
            p.compressed(tokens_in, tokens_out)

    def generated(self, tokens: int) -> None:
        for p in self.parts:
            p.generated(tokens)

    def verified(self, tokens_per_forward: Sequence[int]) -> None:
        for p in self.parts:
            p.verified(tokens_per_forward)

    def stage(self, name: str) -> AbstractContextManager[object]:
        stack = ExitStack()
        for p in self.parts:
            stack.enter_context(p.stage(name))
        return stack


def combine(parts: Sequence[Telemetry]) -> Telemetry:
    """One telemetry over `parts`: NOOP for none, the one itself for one."""
    if not parts:
        return NOOP
    return parts[0] if len(parts) == 1 else Fanout(*parts)
