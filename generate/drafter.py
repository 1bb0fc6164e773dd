"""Per-step drafting: ask every source for continuations of the context and fuse them into one tree.

Each source's per-token confidence is shape(match length) times a trust ratio that starts at the
source's prior and is re-estimated during the request from how often its most likely next token was
the one the model produced (a global corpus can be far less aligned with the model than its own
context or the passages; this learns that within a few steps instead of hard-coding it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lodestar.generate.costmodel import CostModel, OnlineCost
from lodestar.generate.datastore import Datastore, LookupConfig
from lodestar.generate.history import OutputHistory
from lodestar.generate.ngram import context_candidates
from lodestar.generate.recycle import SuccessorTable
from lodestar.generate.tree import DraftTree, FlatTree, match_confidence
from lodestar.generate.types import Candidates


@dataclass(frozen=True)
class DraftConfig:
    """Tree budget and per-source settings (tuned on the code and RAG benchmarks, see bench/specdec)."""

    max_nodes: int = 31  # draft tokens per verification at most (root excluded)
    max_depth: int = 16
    min_score: float = 0.02  # nodes less likely than this to be accepted are never drafted
    cost: CostModel = field(default_factory=CostModel)  # prior forward costs: size the tree, pad the forward
    learn_cost: bool = True  # refine the costs from the decoder's own forward timings
    fusion: str = "max"  # how per-source scores combine: "max" | "noisy_or" (see tree.py)
    half_life: float = 1.2  # match length (tokens) at which a source gets half its trust
    context_prior: float = 0.95  # trust ratios before the request has shown anything
    passages_prior: float = 0.95
    datastore_prior: float = 0.6
    prior_strength: float = 6.0  # pseudo-observations behind each prior
    calibration_strength: float = 3.0  # pseudo expected tokens behind "scores are calibrated"
    calibration_decay: float = 0.9  # per step: old evidence fades, so a source can be retried
    datastore: LookupConfig = field(
        default_factory=lambda: LookupConfig(max_match=16, min_match=2, max_continuation=16)
    )
    passages: LookupConfig = field(default_factory=lambda: LookupConfig(max_match=16, min_match=1, max_continuation=16))
    self_prior: float = 0.5  # early-exit self-drafting (a request's self_draft_layers > 0)
    self_tokens: int = 4  # chain length the early exit writes per step
    self_min_trust: float = 0.15  # below this trust ratio a request stops paying for self-drafts
    # Sources shared across requests (off for seeded sampling, whose draws must not depend on them):
    # Off by default: on the AVX512-BF16 EPYC both together took code completion from 2.09x to 1.62x
    # (larger trees cost more than the tokens they added) and RAG from 1.50x to 1.53x (docs/results.md).
    history: bool = False  # earlier outputs of this decoder (SuffixDecoding's global tree), see history.py
    history_prior: float = 0.8
    history_tokens: int = 1_000_000  # outputs kept, oldest dropped first
    history_lookup: LookupConfig = field(
        default_factory=lambda: LookupConfig(max_match=16, min_match=2, max_continuation=16)
    )
    recycle: bool = False  # token recycling: each token's top-k successors from past logits, see recycle.py
    recycle_prior: float = 0.5
    recycle_paths: int = 16
    recycle_depth: int = 6
    context_max_n: int = 8
    context_min_n: int = 1
    context_matches: int = 8
    continuation: int = 16  # tokens per context continuation


@dataclass
class SourceTrust:
    """Online trust ratio per source: observed hits over hits predicted at full trust, with a prior."""

    priors: dict[str, float]
    strength: float
    hits: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)

    def ratio(self, source: str) -> float:
        prior = self.priors[source]
        return (self.hits.get(source, 0.0) + self.strength * prior) / (self.predicted.get(source, 0.0) + self.strength)

    def observe(self, source: str, predicted: float, hit: bool) -> None:
        self.predicted[source] = self.predicted.get(source, 0.0) + predicted
        self.hits[source] = self.hits.get(source, 0.0) + float(hit)


@dataclass
class Probe:
    """A source's bet on the next token this step, checked once the step's first token is known."""

    source: str
    token: int
    predicted: float  # P(hit) at full trust: shape(match) * share of the token


@dataclass
class DraftState:
    """What drafting keeps across the steps of one request."""

    passages: Datastore | None
    trust: SourceTrust
    datastore: Datastore | None = None  # the global datastore this request drafts from
    history: OutputHistory | None = None  # earlier outputs (None: not for this request)
    recycle: SuccessorTable | None = None
    cost: CostModel | OnlineCost | None = None  # sizes and pads this request's trees
    probes: list[Probe] = field(default_factory=list)
    expected: float = 0.0  # decayed sum of expected accepted draft tokens over verified trees
    accepted: float = 0.0  # decayed sum of accepted draft tokens over the same trees

    def gain_scale(self, strength: float) -> float:
        """Observed / expected accepted tokens, shrunk towards 1 (scores taken at face value)."""
        return (self.accepted + strength) / (self.expected + strength)


class Drafter:
    """Builds the draft tree for one step from the global datastore, request passages and the context."""

    def __init__(
        self,
        config: DraftConfig | None = None,
        datastore: Datastore | None = None,
        fixed_cost: CostModel | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.config = config or DraftConfig()
        self.datastore = datastore
        self.history = OutputHistory(self.config.history_tokens) if self.config.history else None
        self.recycle = SuccessorTable(vocab_size) if self.config.recycle and vocab_size else None
        # Sizes the trees of seeded sampling requests: it must not come from this machine's timings
        # (a calibrated config.cost differs from one start to the next), see start().
        self.fixed_cost = fixed_cost or self.config.cost
        self.cost: CostModel | OnlineCost = OnlineCost(self.config.cost) if self.config.learn_cost else self.config.cost

    def start(
        self,
        passages: Datastore | None = None,
        datastore: Datastore | None | bool = True,
        reproducible: bool = False,
        shared: bool = True,
    ) -> DraftState:
        """State of one request: `passages` its own datastore; `datastore` the global one to draft
        from (True: the drafter's own, None/False: none). `reproducible`: size trees with the fixed
        cost table (`fixed_cost`), neither the one learned from timings nor one measured at start-up,
        so that a seeded sampling request draws the same tokens on every run and every server start
        (tree shapes decide which random numbers are used). `shared`: the request reads and feeds
        the tables shared across requests (output history, recycled successors); plain decoding
        does not, so an A/B of plain and speculative runs of one prompt never drafts from itself."""
        cfg = self.config
        priors = {
            "context": cfg.context_prior,
            "passages": cfg.passages_prior,
            "datastore": cfg.datastore_prior,
            "self": cfg.self_prior,
            "history": cfg.history_prior,
            "recycle": cfg.recycle_prior,
        }
        store = self.datastore if datastore is True else (datastore or None)
        cost = self.fixed_cost if reproducible else self.cost
        shared = shared and not reproducible  # shared tables change with other requests: not for seeded sampling
        return DraftState(
            passages,
            SourceTrust(priors, cfg.prior_strength),
            store,
            history=self.history if shared else None,
            recycle=self.recycle if shared else None,
            cost=cost,
        )

    def forget(self) -> None:
        """Empty the tables shared across requests (evaluation: a clean start after warm-up)."""
        if self.history is not None:
            self.history.clear()
        if self.recycle is not None:
            self.recycle.table.fill(-1)

    def wants_self(self, state: DraftState) -> bool:
        """Whether this step should pay for an early-exit chain: its trust has not fallen too low."""
        return state.trust.ratio("self") >= self.config.self_min_trust

    def _add(self, tree: DraftTree, state: DraftState, found: Candidates | None, depth: int) -> None:
        if found is None:
            return
        # A model-written chain has no context match: its trust ratio alone says how far to follow it.
        # So does a recycled chain: what followed the token last time, no context match at all.
        model_written = found.source in ("self", "recycle")
        shape = 1.0 if model_written else match_confidence(1.0, found.match_len, self.config.half_life)
        conf = min(0.99, state.trust.ratio(found.source) * shape)
        tree.add(found, conf, depth)
        first: dict[int, float] = {}
        for seq, count in found.seqs:
            first[seq[0]] = first.get(seq[0], 0.0) + count
        token, share = max(first.items(), key=lambda kv: kv[1])
        state.probes.append(Probe(found.source, token, shape * share / sum(first.values())))

    def draft(
        self,
        context: np.ndarray,
        state: DraftState | None = None,
        max_nodes: int | None = None,
        max_depth: int | None = None,
        extra: Sequence[Candidates] = (),
    ) -> FlatTree:
        """Tree rooted at context[-1] (the pending token); an empty draft is a lone root.
        `extra`: candidates from sources outside the drafter (the early-exit chain)."""
        cfg = self.config
        state = state or self.start()
        state.probes = []
        budget = cfg.max_nodes if max_nodes is None else min(max_nodes, cfg.max_nodes)
        depth = cfg.max_depth if max_depth is None else min(max_depth, cfg.max_depth)
        tree = DraftTree(int(context[-1]), cfg.fusion)
        if budget > 0 and depth > 0:
            self._add(
                tree,
                state,
                context_candidates(
                    context, cfg.context_max_n, cfg.context_min_n, cfg.continuation, cfg.context_matches
                ),
                depth,
            )
            ctx = context.tolist()
            if state.passages is not None:
                self._add(tree, state, state.passages.lookup(ctx, cfg.passages, source="passages"), depth)
            if state.datastore is not None:
                self._add(tree, state, state.datastore.lookup(ctx, cfg.datastore, source="datastore"), depth)
            if state.history is not None:
                self._add(tree, state, state.history.lookup(ctx, cfg.history_lookup), depth)
            if state.recycle is not None:
                found = state.recycle.candidates(int(context[-1]), cfg.recycle_paths, cfg.recycle_depth)
                self._add(tree, state, found, depth)
            for found in extra:
                self._add(tree, state, found, depth)
        return tree.prune(
            budget, cfg.min_score, depth, state.cost or self.cost, state.gain_scale(cfg.calibration_strength)
        )

    def observe(self, state: DraftState, next_token: int, tree: FlatTree | None = None, accepted: int = 0) -> None:
        """After a step: score the probes against the token the model produced right after the root,
        and (when a tree was verified) compare its expected accepted tokens with what was accepted."""
        for p in state.probes:
            state.trust.observe(p.source, p.predicted, p.token == next_token)
        state.probes = []
        decay = self.config.calibration_decay
        state.expected *= decay
        state.accepted *= decay
        if tree is not None and tree.size > 1:
            state.expected += tree.expected_tokens - 1.0
            state.accepted += accepted
