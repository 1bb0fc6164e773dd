"""Speculative-decoding evaluation: plain greedy vs speculative greedy on the same prompts, same process.

Per prompt the two runs are interleaved (alternating which goes first) so drift on a shared machine
hits both alike; the speedup is the ratio of summed wall times, prefill included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from lodestar.backbone import Backbone
from lodestar.generate.datastore import Datastore
from lodestar.generate.decoder import DecoderConfig, SpeculativeDecoder

# Re-exported: the benchmark workloads live beside the evaluation.
from lodestar.generate.eval.workloads import Workload, code_workload, rag_workload  # noqa: F401
from lodestar.generate.types import GenerationParams, GenerationResult


def _timed(
    decoder: SpeculativeDecoder, prompt: str | Sequence[int], params: GenerationParams, passages: Sequence[str] | None
) -> tuple[GenerationResult, float]:
    t = time.perf_counter()
    res = decoder.generate(prompt, params, passages)
    return res, time.perf_counter() - t


def eval_specdec(
    backbone: Backbone,
    prompts: Sequence[str | Sequence[int]],
    datastore: Datastore | None,
    passages: Sequence[Sequence[str] | None] | None = None,
    max_new_tokens: int = 128,
    chat: bool = False,
    config: DecoderConfig | None = None,
    warmup: bool = True,
    progress: bool = False,
    self_draft_layers: int = 0,
) -> dict[str, Any]:
    """Greedy plain vs speculative decoding per prompt -> speedup, identical, mean accepted tokens, tokens/s.
    `self_draft_layers` > 0 adds early-exit self-drafts from that many layers to the speculative runs."""
    if passages is not None and len(passages) != len(prompts):
        raise ValueError(f"passages must have one entry per prompt ({len(prompts)}); got {len(passages)}")
    decoder = SpeculativeDecoder(backbone, datastore, config)
    plain = GenerationParams(max_new_tokens=max_new_tokens, speculative=False, chat=chat)
    spec = GenerationParams(
        max_new_tokens=max_new_tokens, speculative=True, chat=chat, self_draft_layers=self_draft_layers
    )
    if warmup and prompts:  # first forwards allocate and pick kernels: keep them out of the timing
        p0 = passages[0] if passages else None
        decoder.generate(prompts[0], GenerationParams(max_new_tokens=4, speculative=False, chat=chat))
        decoder.generate(prompts[0], replace(spec, max_new_tokens=4), p0)
        decoder.drafter.forget()  # the warm-up's output must not feed prompt 0's measured drafts
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc="specdec", unit="prompt")
    for i, prompt in enumerate(prompts):
        ps = passages[i] if passages else None
        if i % 2 == 0:
            a, ta = _timed(decoder, prompt, plain, ps)
            s, ts = _timed(decoder, prompt, spec, ps)
        else:
            s, ts = _timed(decoder, prompt, spec, ps)
            a, ta = _timed(decoder, prompt, plain, ps)
        rows.append(
            {
                "prompt_tokens": s.stats.prompt_tokens,
                "generated_tokens": len(s.token_ids),
                "identical": a.token_ids == s.token_ids,
                "plain_s": round(ta, 4),
                "spec_s": round(ts, 4),
                "plain_decode_s": round(a.stats.decode_s, 4),
                "spec_decode_s": round(s.stats.decode_s, 4),
                "steps": s.stats.steps,
                "decode_tokens": sum(s.stats.tokens_per_step),
                "draft_tokens": s.stats.draft_tokens,
                "accepted_draft_tokens": s.stats.accepted_draft_tokens,
                "draft_s": round(s.stats.draft_s, 4),
                "speedup": round(ta / ts, 4) if ts > 0 else None,
            }
        )
        if bar:
            bar.update(1)
            bar.set_postfix(
                speedup=f"{sum(r['plain_s'] for r in rows) / max(sum(r['spec_s'] for r in rows), 1e-9):.2f}"
            )
    if bar:
        bar.close()
    plain_s = sum(r["plain_s"] for r in rows)
    spec_s = sum(r["spec_s"] for r in rows)
    plain_dec = sum(r["plain_decode_s"] for r in rows)
    spec_dec = sum(r["spec_decode_s"] for r in rows)
    tokens = sum(r["generated_tokens"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    drafted = sum(r["draft_tokens"] for r in rows)
    return {
        "n": len(rows),
        "speedup": round(plain_s / spec_s, 4) if spec_s > 0 else None,
        "decode_speedup": round(plain_dec / spec_dec, 4) if spec_dec > 0 else None,
        "identical": all(r["identical"] for r in rows),
        "identical_prompts": sum(r["identical"] for r in rows),
        "mean_accepted_tokens": round(sum(r["decode_tokens"] for r in rows) / steps, 4) if steps else 0.0,
        "draft_acceptance": round(sum(r["accepted_draft_tokens"] for r in rows) / drafted, 4) if drafted else 0.0,
        "plain_tokens_per_s": round(tokens / plain_s, 3) if plain_s > 0 else 0.0,
        "spec_tokens_per_s": round(tokens / spec_s, 3) if spec_s > 0 else 0.0,
        "generated_tokens": tokens,
        "plain_s": round(plain_s, 3),
        "spec_s": round(spec_s, 3),
        "draft_s": round(sum(r["draft_s"] for r in rows), 3),
        "max_new_tokens": max_new_tokens,
        "self_draft_layers": self_draft_layers,
        "per_prompt": rows,
    }
