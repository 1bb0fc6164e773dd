"""Embedding modes: one small strategy class each, chosen per request by name.

A mode decides the input template, where the pooled tokens are, the attention pattern, and whether
Token Prepending hooks run. All modes share one forward (`embed.forward`), so requests whose modes
need the same forward (same attention, hooks, output layer and adapter) can share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lodestar.errors import InvalidInput

TEXT = "{text}"
PROMPTEOL = 'This sentence : "{text}" means in one word:"'
ECHO = "Rewrite the sentence: {text}, rewritten sentence: {text}"


@dataclass(frozen=True)
class TokenPrepend:
    """Token Prepending layer range: before layers start..end (inclusive, 0-based) the placeholder's
    hidden state is overwritten with the previous layer's last-token state; `output_layer` is the
    layer whose last-token output is the embedding (-1: the final, normed output)."""

    start: int = 2
    end: int = 7
    output_layer: int = -1


@dataclass(frozen=True)
class ForwardSpec:
    """Everything about a forward pass that rows in one batch must share (the batcher's key)."""

    bidirectional: bool = False
    adapter: str | None = None
    prepend: TokenPrepend | None = None
    output_layer: int = -1
    sparse: bool = False  # also compute SPLADE vocabulary weights from the LM head


@dataclass
class Encoded:
    """One text ready for the forward: token ids and which of them are pooled."""

    ids: list[int]
    pool_start: int  # pooled span [pool_start, pool_end); last-token modes pool the final token only
    pool_end: int
    placeholder: int | None  # Token Prepending placeholder position
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class Mode:
    """Base strategy. Subclasses set the class attributes; few override methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_prompt: ClassVar[str] = TEXT
    pool: ClassVar[str] = "mean"  # mean over the text span | last token | mean over the last copy
    bidirectional: ClassVar[bool] = False
    uses_placeholder: ClassVar[bool] = False
    min_text_slots: ClassVar[int] = 1

    def check_prompt(self, prompt: str) -> str:
        """The template to use: the request's or the mode's default; must hold {text} often enough."""
        template = prompt or self.default_prompt
        if template.count(TEXT) < self.min_text_slots:
            raise InvalidInput(
                f"prompt for mode {self.name!r} must contain {TEXT!r} at least {self.min_text_slots} "
                f"time(s), e.g. {self.default_prompt!r}"
            )
        return template

    def forward_spec(self, adapter: str | None, prepend: TokenPrepend | None) -> ForwardSpec:
        return ForwardSpec(bidirectional=self.bidirectional, adapter=adapter or None)


class MeanMode(Mode):
    name = "mean"
    description = "mean of the final hidden states over the input (instruction excluded)"


class LastMode(Mode):
    name = "last"
    description = "final hidden state of the last token"
    pool = "last"


class PromptEOLMode(Mode):
    name = "prompteol"
    description = "PromptEOL: the text in a 'means in one word' template, last token"
    default_prompt = PROMPTEOL
    pool = "last"


class EchoMode(Mode):
    name = "echo"
    description = "echo embeddings: the input repeated, mean over the second copy only"
    default_prompt = ECHO
    pool = "last_copy"
    min_text_slots = 2


class TokenPrependMode(Mode):
    name = "token_prepend"
    description = (
        "Token Prepending (training-free): a placeholder before the text carries each layer's "
        "sentence embedding into the next layer; PromptEOL template, last token"
    )
    default_prompt = PROMPTEOL
    pool = "last"
    uses_placeholder = True

    def forward_spec(self, adapter: str | None, prepend: TokenPrepend | None) -> ForwardSpec:
        prepend = prepend or TokenPrepend()
        return ForwardSpec(adapter=adapter or None, prepend=prepend, output_layer=prepend.output_layer)


class BidirectionalMode(Mode):
    name = "bidirectional"
    description = "LLM2Vec-style: causal mask removed in every layer, mean pooling; takes a LoRA adapter"
    bidirectional = True


MODES: dict[str, Mode] = {
    m.name: m() for m in (MeanMode, LastMode, PromptEOLMode, EchoMode, TokenPrependMode, BidirectionalMode)
}


def get_mode(name: str) -> Mode:
    """The mode called `name`; an unknown name fails listing the valid ones."""
    try:
        return MODES[name]
    except KeyError:
        raise InvalidInput(f"unknown mode {name!r}: valid modes are {', '.join(MODES)}") from None


# Strings a fast tokenizer's own backend must tokenise exactly as the tokenizer does before it is used
# directly: spaces, punctuation, accents, CJK, emoji, tabs and newlines, an empty string.
PROBES = ("a", " Hello, world!", "Don't stop", "naïve café — 東京 😀", "  two  spaces\tand\nlines", "x" * 300, "")


def fast_backend(tokenizer: Any) -> Any | None:
    """A private copy of a fast tokenizer's Rust backend, with no truncation or padding (the shared
    one's settings change with every call other code makes), when it tokenises the probes exactly as
    the tokenizer itself does; else None. Its batch call tokenises a request's texts without the
    GIL, so the event loop and the other threads run meanwhile."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    try:
        from tokenizers import Tokenizer

        own = Tokenizer.from_str(backend.to_str())
        own.no_truncation()
        own.no_padding()
        got = [e.ids for e in own.encode_batch_fast(list(PROBES), add_special_tokens=False)]
    except Exception:  # an older tokenizers, or a backend that does not serialise
        return None
    want = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else [] for p in PROBES]
    return own if got == want else None


class InputBuilder:
    """Turns (text, template, instruction) into token ids with the pooled span, within max_tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = fast_backend(tokenizer)
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        self.prefix = (
            list(with_special[: len(with_special) - len(plain)]) if with_special[-len(plain) :] == plain else []
        )
        self.placeholder_id = next(
            t for t in (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None
        )
        self._cache: dict[str, list[int]] = {}

    def _ids(self, s: str) -> list[int]:
        if not s:
            return []
        return list(self.tokenizer(s, add_special_tokens=False)["input_ids"])

    def _ids_many(self, texts: list[str]) -> list[list[int]]:
        if self._backend is None or len(texts) < 2:
            return [self._ids(t) for t in texts]
        return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]

    def _fixed(self, s: str) -> list[int]:
        """Template pieces repeat across requests: tokenise each once.

        Requests are prepared on several threads at once: never read back after a write, since
        another thread may clear the cache in between (a KeyError on a valid request)."""
        ids = self._cache.get(s)
        if ids is None:
            ids = self._ids(s)
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[s] = ids
        return ids

    def count(self, text: str) -> int:
        return len(self._ids(text))

    def build(
        self, mode: Mode, text: str, template: str, instruction: str, max_tokens: int, truncate: bool, index: int = 0
    ) -> Encoded:
        return self.build_many(mode, [text], template, instruction, max_tokens, truncate, first_index=index)[0]

    def build_many(
        self,
        mode: Mode,
        texts: list[str],
        template: str,
        instruction: str,
        max_tokens: int,
        truncate: bool,
        first_index: int = 0,
    ) -> list[Encoded]:
        """`texts` with one template and instruction; the texts are tokenised in one call."""
        fixed = template.split(TEXT)  # fixed[0] TEXT fixed[1] TEXT ... fixed[n]
        slots = len(fixed) - 1
        # A template piece ending in a space hands the space to the text, so the text's first word
        # tokenises as it would mid-sentence.
        lead = ""
        if any(f.endswith(" ") for f in fixed[:-1]):
            lead = " "
            fixed = [f[:-1] if i < slots and f.endswith(" ") else f for i, f in enumerate(fixed)]
        elif fixed[0] == "" and instruction.endswith(" "):  # "query: " + text, as one sentence would be
            lead = " "
            instruction = instruction[:-1]
        head = self.prefix + (self._fixed(instruction) if instruction else [])
        fixed_ids = [self._fixed(f) for f in fixed]
        overhead = len(head) + sum(len(f) for f in fixed_ids) + (1 if mode.uses_placeholder else 0)
        budget = (max_tokens - overhead) // slots
        if budget < 1:
            raise InvalidInput(f"the template and instruction alone take {overhead} tokens; max_tokens is {max_tokens}")
        all_ids = self._ids_many([lead + t for t in texts] if lead else list(texts))
        return [
            self._assemble(mode, text_ids, head, fixed_ids, overhead, budget, max_tokens, truncate, first_index + i)
            for i, text_ids in enumerate(all_ids)
        ]

    def _assemble(
        self,
        mode: Mode,
        text_ids: list[int],
        head: list[int],
        fixed_ids: list[list[int]],
        overhead: int,
        budget: int,
        max_tokens: int,
        truncate: bool,
        index: int,
    ) -> Encoded:
        """One text's ids in its template; `budget`: the tokens each copy of the text may take."""
        slots = len(fixed_ids) - 1
        truncated = len(text_ids) > budget
        if truncated:
            if not truncate:
                raise InvalidInput(
                    f"text {index} needs {overhead + slots * len(text_ids)} tokens with its template; "
                    f"the limit is max_tokens={max_tokens} (set truncate to END to cut it)"
                )
            text_ids = text_ids[:budget]
        ids = list(head)
        placeholder = None
        last_copy = (0, 0)
        for i, piece in enumerate(fixed_ids):
            ids += piece
            if i < slots:
                if mode.uses_placeholder and placeholder is None:
                    placeholder = len(ids)
                    ids.append(self.placeholder_id)
                last_copy = (len(ids), len(ids) + len(text_ids))
                ids += text_ids
        if mode.pool == "last":
            start, end = len(ids) - 1, len(ids)
        elif mode.pool == "last_copy":
            start, end = last_copy
            if end == start:  # empty text copy: fall back to the last token
                start, end = len(ids) - 1, len(ids)
        else:
            start, end = len(head), len(ids)
        return Encoded(ids=ids, pool_start=start, pool_end=end, placeholder=placeholder, truncated=truncated)
