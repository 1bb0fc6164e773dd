"""BEIR-style evaluation: index a corpus into a throwaway collection, search every judged query,
report nDCG@10 (linear graded gains, as trec_eval) and recall@100."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from lodestar.errors import InvalidInput
from lodestar.retrieve.backends.milvus_store import MilvusOptions
from lodestar.retrieve.search import MAX_QUERIES
from lodestar.retrieve.types import CollectionConfig, Document, SearchRequest


def read_beir(folder: Path, split: str = "test") -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    """-> (corpus documents (title + text), queries {id: text}, qrels {qid: {doc_id: gain}})."""
    corpus_file, queries_file, qrels_file = (
        folder / "corpus.jsonl",
        folder / "queries.jsonl",
        folder / "qrels" / f"{split}.tsv",
    )
    for path in (corpus_file, queries_file, qrels_file):
        if not path.is_file():
            raise InvalidInput(f"{folder} is not a BEIR folder: {path.relative_to(folder)} is missing")
    docs = []
    with open(corpus_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                title = (o.get("title") or "").strip()
                text = (o.get("text") or "").strip()
                body = f"{title}. {text}" if title and text else (title or text)
                if body:
                    docs.append(Document(id=str(o["_id"]), text=body, metadata={}))
    queries = {}
    with open(queries_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                queries[str(o["_id"])] = o["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8") as f:
        next(f)  # header: query-id corpus-id score
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and int(parts[2]) > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return docs, queries, qrels


def in_fold(qid: str, fold: str) -> bool:
    """fold "k/n": whether query `qid` falls in fold k of n (a stable hash of the id, the same on every
    machine), for cross-validating an adapter trained on a collection's own judgements: train on the
    queries outside fold k, score the ones inside."""
    try:
        k, n = (int(x) for x in fold.split("/"))
    except ValueError:
        raise InvalidInput(f"fold must be k/n with 0 <= k < n, got {fold!r}") from None
    if not 0 <= k < n:
        raise InvalidInput(f"fold must be k/n with 0 <= k < n, got {fold!r}")
    return zlib.crc32(qid.encode("utf-8")) % n == k


def ndcg_at(ranked: list[str], gains: dict[str, int], k: int = 10) -> float:
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], gains: dict[str, int], k: int = 100) -> float:
    return len(set(ranked[:k]) & set(gains)) / len(gains) if gains else 0.0


def index_key(docs: list[Document], config: CollectionConfig, embedder: Any) -> str:
    """What an indexed corpus depends on: its documents, the collection config, the model and the
    adapters' weight files (size and time: a retrained adapter at the same path is a new index)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode("utf-8", "surrogatepass") + b"\0" + d.text.encode("utf-8", "surrogatepass") + b"\0")
    backbone = getattr(embedder, "backbone", None)
    weights = []
    for name in (config.adapter, config.sparse_adapter):
        if name and backbone is not None:
            _, folder = backbone.adapters.resolve(name)
            weights += [
                (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(folder).glob("adapter_model.*"))
            ]
    fields = dataclasses.asdict(config)
    if fields.get("backend") == "faiss":  # the key of an index made before backends existed
        del fields["backend"]
    meta = {"config": fields, "model": str(getattr(backbone, "model_id", "")), "adapters": weights}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class QueryCache:
    """The embedder, with each embed call's result kept by (texts, options): an evaluation searches the
    same queries once per retriever, fusion and alpha, and should embed them once."""

    def __init__(self, embedder: Any) -> None:
        self.inner = embedder
        self.backbone = getattr(embedder, "backbone", None)
        self.config = getattr(embedder, "config", None)
        self._kept: dict[Any, Any] = {}

    def embed(self, texts: list[str], options: Any = None, timeout: float | None = None) -> Any:
        key = (tuple(texts), options)
        if key not in self._kept:
            self._kept[key] = self.inner.embed(texts, options, timeout)
        return self._kept[key]

    def forget(self) -> None:
        """Drop what is kept (documents are embedded once anyway; only queries repeat)."""
        self._kept.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def search_all(engine: Any, collection: str, request: SearchRequest, per_call: int = MAX_QUERIES) -> list[Any]:
    """Every query of `request`, searched `per_call` at a time (a search takes at most the engine's
    max_queries_per_search: SQuAD's 1,278 judged questions are more)."""
    queries = list(request.queries)
    out: list[Any] = []
    for i in range(0, len(queries), per_call):
        out += engine.search(collection, dataclasses.replace(request, queries=queries[i : i + per_call]))
    return out


def eval_beir(
    embedder: Any,
    folder: Path,
    *,
    retrievers: tuple[str, ...] = ("dense",),
    config: CollectionConfig | None = None,
    fusions: tuple[str, ...] = ("auto",),
    alphas: tuple[float, ...] = (0.5,),
    batch_docs: int = 64,
    progress: bool = True,
    work_dir: Path | None = None,
    feedback: tuple[int, float] = (0, 1.0),
    length_norm: float = 0.0,
    milvus: MilvusOptions | None = None,
) -> list[dict[str, Any]]:
    """Index `folder`'s corpus once with `config`, then search with each retriever
    (dense | bm25 | sparse | hybrid); one result dict per retriever, and for hybrid per fusion (and
    per alpha of weighted and dbsf fusion; auto calibrates the collection first, without labels, and
    reports the calibration record). work_dir: keep the indexed collection there (under `index_key`), so
    an interrupted run resumes from its last stored batch and a rerun with other retrievers, fusions
    or alphas encodes nothing; None = a temporary folder. feedback: (chunks, weight) of learned-sparse
    pseudo-relevance feedback at search time (`SearchRequest.feedback_chunks`; not part of the index);
    length_norm: learned-sparse chunk length normalisation at search time (`SearchRequest.length_norm`).
    milvus: where a collection with backend milvus lives; None = Milvus Lite in the index folder."""
    from lodestar.retrieve.engine import RetrievalEngine

    docs, queries, qrels = read_beir(folder)
    judged = [q for q in queries if q in qrels]
    config = config or CollectionConfig(name="eval")
    kinds = {"dense": "dense", "bm25": "sparse", "sparse": "sparse", "hybrid": "hybrid"}
    if "bm25" in retrievers and config.sparse != "bm25":
        raise InvalidInput(
            f"retriever bm25 needs the collection's sparse side to be bm25 (it is {config.sparse!r}); use 'sparse'"
        )
    for r in retrievers:
        if r not in kinds:
            raise InvalidInput(f"unknown retriever {r!r}: valid are {', '.join(kinds)}")
    dataset = folder.name if folder.name != "beir" else folder.parent.name
    place: Any = (
        contextlib.nullcontext(Path(work_dir) / f"{dataset}-{index_key(docs, config, embedder)}")
        if work_dir
        else tempfile.TemporaryDirectory(prefix="lodestar-eval-")
    )
    with place as root:
        if config.backend == "milvus" and milvus is None:
            milvus = MilvusOptions(uri=str(Path(root) / ".milvus-lite.db"))  # in-process; not a collection folder
        cache = QueryCache(embedder)
        engine = RetrievalEngine(Path(root), cache, milvus=milvus if config.backend == "milvus" else None)
        try:
            if config.name not in {c.name for c in engine.list()}:
                engine.create(config)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(docs), desc=f"index {folder.name}", unit="doc")
            t0 = time.perf_counter()
            reused = 0
            for i in range(0, len(docs), batch_docs):
                batch = docs[i : i + batch_docs]
                if work_dir and all(engine.get(config.name, [d.id for d in batch])):  # stored by an earlier run
                    reused += len(batch)
                else:
                    engine.upsert(config.name, batch)
                if bar:
                    bar.update(len(batch))
            if bar:
                bar.close()
            index_s = time.perf_counter() - t0
            cache.forget()  # the documents' vectors are stored; from here on only queries repeat
            calibration = None
            if "hybrid" in retrievers and "auto" in fusions:  # what fusion=auto will use, chosen without labels
                t0 = time.perf_counter()
                calibration = engine.calibrate(config.name)
                calibration = {"calibrate_s": round(time.perf_counter() - t0, 2), **calibration}
            out = []
            runs = [
                (r, f, a)
                for r in retrievers
                for f in (fusions if r == "hybrid" else ("",))
                for a in (alphas if f in ("weighted", "dbsf") else (0.5,))
            ]
            for retriever, fusion, alpha in runs:
                t0 = time.perf_counter()
                learned = retriever in ("sparse", "hybrid") and config.sparse == "learned"
                fb, b = (feedback, length_norm) if learned else ((0, 1.0), 0.0)
                request = SearchRequest(
                    queries=[queries[q] for q in judged],
                    k=100,
                    retriever=kinds[retriever],
                    fusion=fusion or "auto",
                    alpha=alpha,
                    feedback_chunks=fb[0],
                    feedback_weight=fb[1],
                    length_norm=b,
                )
                results = search_all(engine, config.name, request)
                search_s = time.perf_counter() - t0
                ndcg = [ndcg_at([h.id for h in hits], qrels[q]) for q, hits in zip(judged, results)]
                recall = [recall_at([h.id for h in hits], qrels[q]) for q, hits in zip(judged, results)]
                out.append(
                    {
                        "dataset": dataset,
                        "backend": config.backend,
                        "retriever": retriever,
                        "mode": config.mode,
                        "sparse": config.sparse if retriever in ("sparse", "bm25", "hybrid") else None,
                        "sparse_adapter": config.sparse_adapter or None,
                        "query_idf": config.query_idf
                        if config.sparse == "learned" and retriever in ("sparse", "hybrid")
                        else None,
                        "feedback": list(fb) if fb[0] else None,
                        "length_norm": b or None,
                        "adapter": config.adapter or None,
                        "index": config.index,
                        "fusion": fusion or None,
                        "alpha": alpha if fusion in ("weighted", "dbsf") else None,
                        "calibration": calibration if fusion == "auto" else None,
                        "ndcg@10": round(sum(ndcg) / len(ndcg), 4),
                        "recall@100": round(sum(recall) / len(recall), 4),
                        "queries": len(judged),
                        "documents": len(docs),
                        "index_s": round(index_s, 2),
                        "reused_documents": reused,
                        "search_s": round(search_s, 3),
                        "per_query_ms": round(1000 * search_s / max(1, len(judged)), 2),
                    }
                )
        finally:
            engine.close()
    return out
