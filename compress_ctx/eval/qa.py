"""Compression evaluation on SQuAD-style QA over a BEIR corpus (`lodestar eval compress`).

Per question: retrieve the top-k passages, compress them, and let the backbone reader answer with
no context, the full top-k, the compressed context, and selectively (no context when the
compressor's best score is below the threshold). Reports compression rate, whether the gold answer
survives in each context, reader EM/F1, and the time compression takes against the time the reader
takes on the uncompressed context. With no threshold given, one is calibrated on a disjoint split.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.compress_ctx.engine import CompressionEngine
from lodestar.compress_ctx.eval.reader import Reader
from lodestar.compress_ctx.eval.selective import calibrate_threshold
from lodestar.compress_ctx.metrics import answer_in_context, exact_match, f1_score
from lodestar.compress_ctx.types import AUGMENT, METHODS, CompressResult, join_passages
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput
from lodestar.jsonl import read_jsonl
from lodestar.retrieve.eval.beir import read_beir

RETRIEVERS = ("bm25", "dense", "hybrid")


@dataclass
class QA:
    id: str
    question: str
    answers: list[str]


def read_qa(path: Path) -> list[QA]:
    """JSONL lines {id, question, answers[, title, context]}; questions without answers are skipped."""
    out = []
    for n, o in read_jsonl(path):
        if not isinstance(o, dict) or "question" not in o or "answers" not in o:
            raise InvalidInput(f"{path}:{n}: each line needs 'question' and 'answers'")
        answers = [a for a in o["answers"] if isinstance(a, str) and a.strip()]
        if answers:
            out.append(QA(str(o.get("id", n)), o["question"], answers))
    if not out:
        raise InvalidInput(f"{path} holds no answerable question")
    return out


def split_questions(items: list[QA], n: int, calibration: int, seed: int) -> tuple[list[QA], list[QA]]:
    """A seeded shuffle: the first n are evaluated, the next `calibration` calibrate (disjoint)."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n = n or len(shuffled) - calibration
    if n <= 0 or n + calibration > len(shuffled):
        raise InvalidInput(f"{len(shuffled)} questions cannot give {n} to evaluate and {calibration} to calibrate")
    return shuffled[:n], shuffled[n : n + calibration]


def retrieve(embedder: Any, corpus: Path, questions: list[str], k: int, retriever: str, mode: str) -> list[list[str]]:
    """Top-k passage texts per question: BM25 over the corpus directly (no embedding needed), or
    dense/hybrid through a throwaway RetrievalEngine collection."""
    docs, _, _ = read_beir(corpus)
    if retriever == "bm25":
        from lodestar.retrieve.bm25 import BM25Index

        index = BM25Index()
        index.add(np.arange(len(docs), dtype=np.int64), [d.text for d in docs])
        return [[docs[i].text for i, _ in hits] for hits in index.search(questions, k)]
    from lodestar.retrieve.engine import RetrievalEngine
    from lodestar.retrieve.types import CollectionConfig, SearchRequest

    with tempfile.TemporaryDirectory(prefix="lodestar-compress-") as tmp:
        engine = RetrievalEngine(Path(tmp), embedder)
        try:
            engine.create(CollectionConfig(name="qa", mode=mode, chunk_tokens=0))
            for i in range(0, len(docs), 64):
                engine.upsert("qa", docs[i : i + 64])
            hits = engine.search("qa", SearchRequest(queries=questions, k=k, retriever=retriever))
        finally:
            engine.close()
    return [[h.text for h in row] for row in hits]


def _scores(answers: list[str], golds: list[list[str]], contexts: list[str]) -> dict[str, float]:
    n = len(answers)
    return {
        "em": round(sum(exact_match(a, g) for a, g in zip(answers, golds)) / n, 4),
        "f1": round(sum(f1_score(a, g) for a, g in zip(answers, golds)) / n, 4),
        "answer_in_context": round(sum(answer_in_context(c, g) for c, g in zip(contexts, golds)) / n, 4),
    }


def _compress_all(
    engine: CompressionEngine,
    method: str,
    questions: list[str],
    passages: list[list[str]],
    kwargs: dict[str, Any],
    progress: bool,
    label: str,
) -> list[CompressResult]:
    if method == "abstractive":  # one batched generation is much faster than one call per question
        out: list[CompressResult] = []
        bar = _bar(progress, len(questions), f"{label} abstractive")
        step = 4
        for i in range(0, len(questions), step):
            out += engine.abstractive_many(
                questions[i : i + step],
                passages[i : i + step],
                max_new_tokens=kwargs.get("max_new_tokens"),
                adapter=kwargs.get("adapter", ""),
            )
            if bar:
                bar.update(len(questions[i : i + step]))
        if bar:
            bar.close()
        return out
    results = []
    bar = _bar(progress, len(questions), f"{label} extractive")
    for q, ps in zip(questions, passages):
        results.append(engine.compress(q, ps, method, **kwargs))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return results


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q")


def _read(reader: Reader, questions: list[str], contexts: list[str]) -> tuple[list[str], float]:
    """Reader answers and the seconds they took; an empty context is answered closed-book."""
    t0 = time.perf_counter()
    answers = [g.text for g in reader.answer(questions, contexts)]
    return answers, time.perf_counter() - t0


def eval_compress(
    backbone: Any,
    embedder: Any,
    qa_file: Path,
    corpus: Path,
    *,
    k: int = 5,
    method: str = "extractive",
    n: int = 200,
    calibration: int = 100,
    seed: int = 0,
    retriever: str = "bm25",
    retrieval_mode: str = "prompteol",
    budget_tokens: int | None = None,
    budget_ratio: float | None = 0.15,
    top_n: int | None = None,
    order: str = "original",
    threshold: float | None = None,
    max_new_tokens: int | None = None,
    options: EmbedOptions | None = None,
    query_options: EmbedOptions | None = None,
    engine: CompressionEngine | None = None,
    adapter: str = "",
    reader_batch: int = 8,
    cold_questions: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; returns one JSON-ready dict.

    `threshold` None (extractive): calibrated on `calibration` further questions (0: selective off).
    `cold_questions`: compression is also timed on this many questions with an empty sentence cache."""
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}: valid are {', '.join(METHODS)}")
    if retriever not in RETRIEVERS:
        raise InvalidInput(f"unknown retriever {retriever!r}: valid are {', '.join(RETRIEVERS)}")
    if k <= 0:
        raise InvalidInput(f"k must be > 0; got {k}")
    t_start = time.perf_counter()
    engine = engine or CompressionEngine(backbone, embedder)
    reader = Reader(backbone, batch_size=reader_batch)
    calibrate = method == "extractive" and threshold is None and calibration > 0
    items, calib = split_questions(read_qa(qa_file), n, calibration if calibrate else 0, seed)
    kwargs: dict[str, Any] = {
        "budget_tokens": budget_tokens,
        "budget_ratio": budget_ratio,
        "top_n": top_n,
        "order": order,
        "options": options,
        "query_options": query_options,
    }
    if method == "abstractive":
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "adapter": adapter,
            "preselect_tokens": engine.config.preselect_tokens,
            "min_support": engine.config.min_support,
        }

    t0 = time.perf_counter()
    everything = items + calib
    passages = retrieve(embedder, corpus, [q.question for q in everything], k, retriever, retrieval_mode)
    retrieval_s = time.perf_counter() - t0
    passages_eval, passages_calib = passages[: len(items)], passages[len(items) :]
    questions = [q.question for q in items]
    golds = [q.answers for q in items]

    calibration_out: dict[str, Any] | None = None
    if calibrate:
        cq = [q.question for q in calib]
        cres = _compress_all(engine, method, cq, passages_calib, kwargs, progress, "calibrate")
        with_ctx, _ = _read(reader, cq, [r.text for r in cres])
        without, _ = _read(reader, cq, [""] * len(cq))
        cg = [q.answers for q in calib]
        cal = calibrate_threshold(
            [r.score if r.score is not None else float("-inf") for r in cres],
            [f1_score(a, g) for a, g in zip(with_ctx, cg)],
            [f1_score(a, g) for a, g in zip(without, cg)],
        )
        threshold = cal.threshold if cal.threshold is not None else float("-inf")  # -inf: never skip
        calibration_out = {**cal.as_dict(), "gain": "f1"}

    # Cold compression timing: a fresh sentence cache, as for passages never seen before.
    cold_s = None
    if method == "extractive" and cold_questions > 0:
        saved = engine.extractive.cache
        engine.extractive.cache = type(saved)(saved.max_entries)
        t0 = time.perf_counter()
        for q, ps in list(zip(questions, passages_eval))[:cold_questions]:
            engine.compress(q, ps, method, **kwargs)
        cold_s = (time.perf_counter() - t0) / min(cold_questions, len(questions))
        engine.extractive.cache = saved

    t0 = time.perf_counter()
    results = _compress_all(engine, method, questions, passages_eval, kwargs, progress, "eval")
    compress_s = time.perf_counter() - t0

    full = [join_passages(ps) for ps in passages_eval]
    compressed = [r.text for r in results]
    if progress:
        print(f"reading {len(questions)} questions x 3 contexts", flush=True)
    ans_none, none_s = _read(reader, questions, [""] * len(questions))
    ans_full, full_s = _read(reader, questions, full)
    # An empty compressed context is the closed-book case: reuse those answers.
    todo = [i for i, c in enumerate(compressed) if c]
    got, comp_s = _read(reader, [questions[i] for i in todo], [compressed[i] for i in todo])
    ans_comp = list(ans_none)
    for i, a in zip(todo, got):
        ans_comp[i] = a

    out: dict[str, Any] = {
        "method": method,
        "questions": len(items),
        "k": k,
        "retriever": retriever,
        "model": getattr(backbone, "model_id", ""),
        "torch_dtype": str(getattr(backbone, "dtype", "")).replace("torch.", ""),
        "settings": {
            **{key: (v.__dict__ if isinstance(v, EmbedOptions) else v) for key, v in kwargs.items()},
            "scorer": {
                "lexical_weight": engine.config.lexical_weight,
                "passage_weight": engine.config.passage_weight,
                "max_candidates": engine.config.max_candidates,
            }
            if method == "extractive"
            else None,
            "seed": seed,
        },
        "tokens_before": round(float(np.mean([r.tokens_before for r in results])), 1),
        "tokens_after": round(float(np.mean([r.tokens_after for r in results])), 1),
        "compression_rate": round(
            sum(r.tokens_after for r in results) / max(1, sum(r.tokens_before for r in results)), 4
        ),
        "no_context": _scores(ans_none, golds, [""] * len(items)),
        "full": _scores(ans_full, golds, full),
        "compressed": _scores(ans_comp, golds, compressed),
    }
    out["answer_in_context_kept"] = (
        round(out["compressed"]["answer_in_context"] / out["full"]["answer_in_context"], 4)
        if out["full"]["answer_in_context"]
        else None
    )
    if method == "extractive" and threshold is not None:
        keep = [r.score is not None and r.score >= threshold and r.decision == AUGMENT for r in results]
        ans_sel = [c if kp else nn for c, nn, kp in zip(ans_comp, ans_none, keep)]
        ctx_sel = [c if kp else "" for c, kp in zip(compressed, keep)]
        out["selective"] = {
            **_scores(ans_sel, golds, ctx_sel),
            "threshold": round(threshold, 4) if np.isfinite(threshold) else None,
            "skipped": keep.count(False),
            "tokens_after": round(float(np.mean([r.tokens_after if kp else 0 for r, kp in zip(results, keep)])), 1),
        }
        out["calibration"] = calibration_out
    if method == "abstractive":
        faith = [r.faithfulness for r in results if r.faithfulness is not None]
        out["declined"] = sum(1 for r in results if r.decision != AUGMENT)
        out["faithfulness"] = {
            "summaries": len(faith),
            "supported_ratio": round(float(np.mean([f.supported_ratio for f in faith])), 4) if faith else None,
            "unsupported_words_per_summary": round(float(np.mean([f.unsupported_words for f in faith])), 2)
            if faith
            else None,
        }
    nq = len(items)
    out["timing"] = {
        "retrieval_s": round(retrieval_s, 2),
        "compress_s_per_question": round(compress_s / nq, 3),
        "compress_cold_s_per_question": round(cold_s, 3) if cold_s is not None else None,
        "reader_full_s_per_question": round(full_s / nq, 3),
        "reader_compressed_s_per_question": round(comp_s / max(1, len(todo)), 3),
        "reader_none_s_per_question": round(none_s / nq, 3),
        "compress_over_reader_full": round(compress_s / full_s, 3) if full_s else None,
        "reader_batch": reader_batch,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    out["examples"] = [
        {
            "question": questions[i],
            "answers": golds[i],
            "compressed": compressed[i][:400],
            "full_answer": ans_full[i],
            "compressed_answer": ans_comp[i],
            "decision": results[i].decision,
            "score": None if (score := results[i].score) is None else round(score, 4),
        }
        for i in range(min(5, nq))
    ]
    return out
