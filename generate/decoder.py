"""Plain and retrieval-augmented speculative decoding over a Backbone's causal LM, one request at a time.

Speculative step: draft a token tree (datastore, request passages, the context's own n-grams, and on
request an early-exit chain from the backbone's first layers, see selfdraft.py), run ONE
forward over [pending token + tree] with a tree attention mask and tree position ids on top of the
KV cache, walk the tree with the target model's choices, keep only the accepted path in the cache.
Greedy output equals plain greedy decoding; sampling keeps the target distribution exactly
(recursive rejection sampling over each node's children, see sampling.py).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lodestar.backbone import Backbone
from lodestar.backbone.compat import cache_kwargs, output_cache
from lodestar.errors import InvalidInput
from lodestar.generate.costmodel import measure, synchronizer
from lodestar.generate.datastore import Datastore
from lodestar.generate.drafter import DraftConfig, Drafter
from lodestar.generate.kvcache import cache_length, full_cache, keep_path, tree_mask
from lodestar.generate.sampling import sample, target_probs, verify_children
from lodestar.generate.selfdraft import early_exit_chain
from lodestar.generate.textstream import TextStream
from lodestar.generate.tree import FlatTree
from lodestar.generate.types import Candidates, DecodeStats, GenerationChunk, GenerationParams, GenerationResult

Cancel = threading.Event | Callable[[], bool] | None


@dataclass(frozen=True)
class DecoderConfig:
    """Limits a request is checked against, and the drafting settings."""

    draft: DraftConfig = field(default_factory=DraftConfig)
    max_new_tokens: int = 2048
    max_stop_strings: int = 16
    max_stop_chars: int = 256  # per stop string
    max_passages: int = 64
    max_passage_chars: int = 200_000  # all passages of one request together
    max_temperature: float = 100.0
    # Measure this machine's forward-cost curve when the decoder is built (a few seconds) and size
    # trees against it, instead of the prior table: on the development CPUs the curve moved from
    # 3.2x (32 tokens, 1 thread) to 2.2x (2 threads), and RAG speed-up went from 1.44x to 1.58x.
    calibrate_cost: bool = True


def _cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _eos_ids(backbone: Backbone) -> set[int]:
    ids: set[int] = set()
    for value in (
        getattr(backbone.tokenizer, "eos_token_id", None),
        getattr(getattr(backbone.model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class SpeculativeDecoder:
    """Generates text from a Backbone, plainly or speculatively; safe to share across threads
    (each request has its own KV cache; forwards take `backbone.lock`)."""

    def __init__(
        self, backbone: Backbone, datastore: Datastore | None = None, config: DecoderConfig | None = None
    ) -> None:
        self.backbone = backbone
        self._sync = synchronizer(backbone.device)  # timings observed per forward wait for the device
        self.config = config or DecoderConfig()
        draft = self.config.draft
        if self.config.calibrate_cost:
            draft = replace(draft, cost=measure(backbone, max_len=draft.cost.max_len, reps=3))
        # Seeded sampling sizes its trees with the configured table, never the measured one (timings
        # differ between starts, and tree shapes decide which random numbers a request draws).
        self.drafter = Drafter(
            draft, datastore, fixed_cost=self.config.draft.cost, vocab_size=int(backbone.model.config.vocab_size)
        )
        self.eos_ids = _eos_ids(backbone)
        self.max_positions = backbone.max_tokens

    @property
    def datastore(self) -> Datastore | None:
        return self.drafter.datastore

    # --- request preparation ---------------------------------------------------------------------

    def encode_prompt(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        """Token ids of a text prompt (optionally wrapped as a chat user turn) or given ids as-is."""
        tok = self.backbone.tokenizer
        if isinstance(prompt, str):
            if chat:
                if not getattr(tok, "chat_template", None):
                    raise InvalidInput(f"chat=True but the tokenizer of {self.backbone.model_id} has no chat template")
                text = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
                return list(tok(text, add_special_tokens=False)["input_ids"])
            return list(tok(prompt)["input_ids"])
        ids = [int(t) for t in prompt]
        vocab = int(self.backbone.model.config.vocab_size)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidInput(f"prompt token ids must be in [0, {vocab}); got {bad[:5]}")
        return ids

    def validate(self, prompt_ids: Sequence[int], params: GenerationParams, passages: Sequence[str] | None) -> None:
        """Raise InvalidInput naming the limit before any work starts."""
        c = self.config
        if not prompt_ids:
            raise InvalidInput("the prompt is empty: give at least one token")
        if not 1 <= params.max_new_tokens <= c.max_new_tokens:
            raise InvalidInput(f"max_new_tokens must be in 1..{c.max_new_tokens}; got {params.max_new_tokens}")
        if len(prompt_ids) + params.max_new_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"model's context of {self.max_positions} tokens"
            )
        if not 0.0 <= params.temperature <= c.max_temperature:
            raise InvalidInput(
                f"temperature must be in [0, {c.max_temperature}] (0 = greedy); got {params.temperature}"
            )
        if not 0 <= params.self_draft_layers < self.backbone.num_layers:
            raise InvalidInput(
                f"self_draft_layers must be in 0..{self.backbone.num_layers - 1} (0 = off; the model has "
                f"{self.backbone.num_layers} layers); got {params.self_draft_layers}"
            )
        if not 0.0 < params.top_p <= 1.0:
            raise InvalidInput(f"top_p must be in (0, 1]; got {params.top_p}")
        if len(params.stop) > c.max_stop_strings:
            raise InvalidInput(f"at most {c.max_stop_strings} stop strings; got {len(params.stop)}")
        for s in params.stop:
            if not s or len(s) > c.max_stop_chars:
                raise InvalidInput(f"stop strings must have 1..{c.max_stop_chars} characters; got {len(s)}")
        if passages:
            if len(passages) > c.max_passages:
                raise InvalidInput(f"at most {c.max_passages} passages per request; got {len(passages)}")
            total = sum(len(p) for p in passages)
            if total > c.max_passage_chars:
                raise InvalidInput(f"passages may hold {c.max_passage_chars} characters in all; got {total}")

    # --- public entry points ---------------------------------------------------------------------

    def stream(
        self,
        prompt: str | Sequence[int],
        params: GenerationParams | None = None,
        passages: Sequence[str] | None = None,
        cancel: Cancel = None,
        datastore: Datastore | None | bool = True,
    ) -> Iterator[GenerationChunk]:
        """Validate now, then yield one chunk per decode step (the last one has finish_reason and stats).

        `passages` only feed the drafts (a per-request datastore); put them in the prompt yourself.
        `datastore`: the global datastore to draft from (True: the decoder's own; None: none).
        `cancel` (an Event or a callable) is checked between steps.
        """
        params = params or GenerationParams()
        ids = self.encode_prompt(prompt, params.chat)
        self.validate(ids, params, passages)
        return self._run(ids, params, passages, cancel, datastore)

    def generate(
        self,
        prompt: str | Sequence[int],
        params: GenerationParams | None = None,
        passages: Sequence[str] | None = None,
        cancel: Cancel = None,
        datastore: Datastore | None | bool = True,
    ) -> GenerationResult:
        """Run to completion; -> text, token ids, finish reason, stats."""
        text: list[str] = []
        token_ids: list[int] = []
        last: GenerationChunk | None = None
        for chunk in self.stream(prompt, params, passages, cancel, datastore):
            text.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            last = chunk
        assert last is not None and last.finish_reason is not None and last.stats is not None
        return GenerationResult("".join(text), token_ids, last.finish_reason, last.stats)

    # --- the loop --------------------------------------------------------------------------------

    def _choose(self, logits: torch.Tensor, params: GenerationParams, rng: torch.Generator | None) -> int:
        """One token from (V,) logits: argmax when greedy, else a sample of the processed distribution."""
        if rng is None:
            return int(torch.argmax(logits).item())
        return sample(target_probs(logits, params.temperature, params.top_p), rng)

    def _forward_one(self, token: int, cache: Any) -> torch.Tensor:
        """Plain decode step: one token on top of the cache -> (V,) logits."""
        x = torch.tensor([[token]], device=self.backbone.device)  # (1, 1)
        with self.backbone.lock, torch.inference_mode():
            self._sync()
            t = time.perf_counter()
            out = self.backbone.model(input_ids=x, **cache_kwargs(self.backbone.model, cache), use_cache=True)
            self._sync()
            self._observe_cost(1, time.perf_counter() - t)
        return out.logits[0, -1]  # (V,)

    def _observe_cost(self, length: int, seconds: float) -> None:
        observe = getattr(self.drafter.cost, "observe", None)
        if observe is not None:
            observe(length, seconds)

    def _forward_tree(self, tree: FlatTree, cache: Any, prefix_len: int, cost: Any = None) -> torch.Tensor:
        """Verification step: all tree nodes at once with the tree mask -> (N, V) logits.

        The batch is padded to the cost model's cheapest length >= N; a padding row sees only
        itself, no node sees it, and its cache entry is dropped with the rejected nodes.
        """
        dev = self.backbone.device
        n = tree.size
        length = (cost or self.drafter.cost).padded_length(n)
        tokens = np.full(length, tree.tokens[0], dtype=np.int64)  # (L,)
        tokens[:n] = tree.tokens
        positions = np.full(length, prefix_len, dtype=np.int64)  # (L,)
        positions[:n] = tree.position_ids(prefix_len)
        allowed = torch.zeros(1, 1, length, prefix_len + length, dtype=torch.bool, device=dev)  # (1, 1, L, P + L)
        allowed[0, 0, :n, : prefix_len + n] = tree.attention_mask(prefix_len, dev)[0, 0]
        pad = torch.arange(n, length, device=dev)
        allowed[0, 0, pad, prefix_len + pad] = True
        pos = torch.from_numpy(positions).to(dev)[None]  # (1, L)
        mask = tree_mask(allowed, pos[0], self.backbone.model.config, self.backbone.dtype)
        x = torch.from_numpy(tokens).to(dev)[None]  # (1, L)
        with self.backbone.lock, torch.inference_mode():
            self._sync()
            t = time.perf_counter()
            out = self.backbone.model(
                input_ids=x,
                attention_mask=mask,
                position_ids=pos,
                **cache_kwargs(self.backbone.model, cache),
                use_cache=True,
            )
            self._sync()
            self._observe_cost(length, time.perf_counter() - t)
        return out.logits[0, :n]  # (N, V)

    def _walk(
        self, tree: FlatTree, logits: torch.Tensor, params: GenerationParams, rng: torch.Generator | None
    ) -> tuple[list[int], int]:
        """Follow the target model through the tree -> (accepted path of node indices, next token)."""
        path = [0]
        node = 0
        if rng is None:
            best = logits.argmax(dim=-1).tolist()  # (N,) greedy choice after each node
            while True:
                tok = best[node]
                nxt = next((c for c in tree.children[node] if int(tree.tokens[c]) == tok), None)
                if nxt is None:
                    return path, tok
                path.append(nxt)
                node = nxt
        while True:
            probs = target_probs(logits[node], params.temperature, params.top_p)  # (V,)
            kids = tree.children[node]
            if not kids:
                return path, sample(probs, rng)
            i, tok = verify_children(probs, [int(tree.tokens[c]) for c in kids], rng)
            if i is None:
                return path, tok
            node = kids[i]
            path.append(node)

    def _run(
        self,
        ids: list[int],
        params: GenerationParams,
        passages: Sequence[str] | None,
        cancel: Cancel,
        datastore: Datastore | None | bool = True,
    ) -> Iterator[GenerationChunk]:
        bb = self.backbone
        stats = DecodeStats(prompt_tokens=len(ids))
        rng: torch.Generator | None = None
        if params.temperature > 0:
            rng = torch.Generator(device="cpu")
            rng.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        text = TextStream(bb.tokenizer, params.stop, params.skip_special_tokens)
        generated: list[int] = []
        finish: str | None = None

        def emit(tokens: list[int]) -> tuple[list[int], str]:
            """Append tokens until a finish condition; -> (tokens taken, text delta)."""
            nonlocal finish
            taken: list[int] = []
            delta = []
            for tok in tokens:
                if tok in self.eos_ids:
                    finish = "eos"
                    break
                generated.append(tok)
                taken.append(tok)
                piece, stopped = text.push([tok])
                delta.append(piece)
                if stopped:
                    finish = "stop"
                    break
                if len(generated) >= params.max_new_tokens:
                    finish = "length"
                    break
            if finish is not None and finish != "stop":
                delta.append(text.finish())
            return taken, "".join(delta)

        t0 = time.perf_counter()
        if _cancelled(cancel):
            yield GenerationChunk([], "", "cancelled", stats)
            return
        x = torch.tensor([ids], device=bb.device)  # (1, T)
        with bb.lock, torch.inference_mode():
            out = bb.model(input_ids=x, **cache_kwargs(bb.model, full_cache()), use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        first = self._choose(out.logits[0, -1], params, rng)
        stats.prefill_s = time.perf_counter() - t0
        taken, delta = emit([first])
        stats.generated_tokens = len(generated)
        yield GenerationChunk(taken, delta, finish, stats if finish else None)
        if finish:
            return

        t = time.perf_counter()
        store = Datastore.from_texts(passages, bb.tokenizer) if params.speculative and passages else None
        state = self.drafter.start(
            store, datastore, reproducible=rng is not None and params.seed is not None, shared=params.speculative
        )
        stats.draft_s += time.perf_counter() - t
        context = np.asarray(ids + generated, dtype=np.int64)  # (T,) drafting context, pending token last
        t_decode = time.perf_counter()
        while finish is None:
            if _cancelled(cancel):
                finish = "cancelled"
                stats.decode_s = time.perf_counter() - t_decode
                yield GenerationChunk([], text.finish(), finish, stats)
                return
            pending = generated[-1]
            prefix_len = cache_length(cache)
            remaining = params.max_new_tokens - len(generated)
            tree: FlatTree | None = None
            if params.speculative:
                t = time.perf_counter()
                depth = min(remaining - 1, self.max_positions - prefix_len - 1)
                extra = []
                if params.self_draft_layers and depth > 0 and self.drafter.wants_self(state):
                    n = min(depth, self.drafter.config.self_tokens)
                    chain = early_exit_chain(bb, cache, pending, prefix_len, params.self_draft_layers, n)
                    extra.append(Candidates("self", 0, [(tuple(chain), 1.0)], 1))
                tree = self.drafter.draft(context, state, max_depth=depth, extra=extra)
                stats.draft_s += time.perf_counter() - t
            if tree is None or tree.size == 1:
                one = self._forward_one(pending, cache)  # (V,)
                if state.recycle is not None:
                    state.recycle.update(np.asarray([pending]), one[None])
                new = [self._choose(one, params, rng)]
            else:
                logits = self._forward_tree(tree, cache, prefix_len, state.cost)  # (N, V)
                if state.recycle is not None:
                    state.recycle.update(tree.tokens, logits)
                path, nxt = self._walk(tree, logits, params, rng)
                with bb.lock, torch.inference_mode():
                    keep_path(cache, prefix_len, path)
                new = [int(tree.tokens[i]) for i in path[1:]] + [nxt]
                stats.draft_tokens += tree.size - 1
                stats.accepted_draft_tokens += len(path) - 1
            if params.speculative:
                self.drafter.observe(state, new[0], tree, len(new) - 1)
            stats.steps += 1
            taken, delta = emit(new)
            stats.tokens_per_step.append(len(new))
            stats.generated_tokens = len(generated)
            if finish is None:
                context = np.concatenate([context, np.asarray(taken, dtype=np.int64)])
            else:
                stats.decode_s = time.perf_counter() - t_decode
                if state.history is not None:
                    state.history.add(generated)
            yield GenerationChunk(taken, delta, finish, stats if finish else None)
