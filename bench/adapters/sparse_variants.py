"""Learned-sparse scoring variants on a BEIR set, from one encoding: which query/document weighting
to serve. Encodes the set's chunks and judged queries once with a sparse adapter (the same chunking
and echo encoder a collection uses, cached in --cache), then rescores offline:

    python bench/adapters/sparse_variants.py DATA/cranfield/beir adapters/sparse-squad \
        --cache .lodestar/variants-cranfield.npz --out bench/results/sparse_variants_cranfield.json

With --from-collection FOLDER (a collection `eval beir --work-dir` or bench/run.sh's ADAPTER_WORK kept)
the chunk vectors, dense too with --dense-cache, are read from its store as served: only the judged
queries are encoded.

Variants: the served dot product (queries cut to 64 weights, chunks to 256; queries also cut to
32, 128 or 256), the query restricted
to its own tokens, query weights replaced by or scaled with IDF (of the text's tokens, or of the
stored sparse vectors as the index computes it), chunk length normalisation on top (b 0.25, 0.5,
0.75; also after feedback and in the hybrid), BM25's saturation applied to the chunk weights (as if they were term frequencies), the query's own tokens
added at their IDF, the vocabulary folded to one entry per word form (case, leading space, plural),
Rocchio pseudo-relevance feedback from the first ranking's top chunks (also after halving the
expansion terms, and with length normalisation), and each document as one vector (the max over its
chunks'). A document scores as
its best chunk; nDCG@10 over the judged queries (--fold k/n: only those of fold k, for an adapter
trained on the others with `triplets.py beir --exclude-fold k/n`), with BM25 on whole documents
(the stack's bm25 side) over the same queries for reference. Picking the best of many variants on
the queries that score it flatters it; the "cross-validated pick" rows (learned sparse, and hybrid
with --dense) pick on one half of the queries and score the other, both ways round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401  (sp.linalg.norm)

if TYPE_CHECKING:
    from lodestar.embed.engine import EmbeddingEngine


def _setup(folder: Path):
    """(engine, docs, queries, judged query ids, chunk texts, owner document of each chunk), chunked as a
    collection chunks (256 tokens, the tokenizer's offsets: the same for every mode)."""
    from lodestar.retrieve.eval.beir import read_beir
    from lodestar.retrieve.prepare import chunk_document
    from lodestar.retrieve.types import CollectionConfig
    from lodestar.services.cli.common import settings
    from lodestar.services.runtime import Runtime

    docs, queries, qrels = read_beir(folder)
    judged = [q for q in queries if q in qrels]
    engine = Runtime(settings(), [])._build_engine(None)
    chunks, owner = [], []
    for i, d in enumerate(docs):
        for s, e in chunk_document(engine, CollectionConfig(name="variants"), d.text):
            chunks.append(d.text[s:e])
            owner.append(i)
    return engine, docs, queries, judged, chunks, owner


def encode_dense(folder: Path, adapter: str, cache: Path) -> None:
    """The dense side of the hybrid: `bidirectional` mode with `adapter`, cosine, as `bench/run.sh`'s
    adapters step configures it."""
    from tqdm import tqdm

    from lodestar.retrieve.prepare import embed_texts
    from lodestar.retrieve.types import CollectionConfig

    engine, docs, queries, judged, chunks, owner = _setup(folder)
    try:
        cfg = CollectionConfig(name="variants", mode="bidirectional", adapter=adapter)
        dim = int(engine.backbone.hidden_size)
        dv = np.concatenate(
            [
                embed_texts(engine, cfg, chunks[i : i + 32], dim, False)
                for i in tqdm(range(0, len(chunks), 32), desc="encode chunks (dense)", unit="batch")
            ]
        )
        qv = embed_texts(engine, cfg, [queries[q] for q in judged], dim, True)
    finally:
        engine.close()
    np.savez(cache, owner=np.array(owner), judged=np.array(judged), d=dv, q=qv)


def encode(folder: Path, adapter: str, cache: Path) -> None:
    from tqdm import tqdm

    from lodestar.retrieve.prepare import embed_sparse
    from lodestar.retrieve.types import CollectionConfig

    engine, docs, queries, judged, chunks, owner = _setup(folder)
    try:
        cfg = CollectionConfig(
            name="variants", sparse="learned", sparse_adapter=adapter, sparse_top_k=1024, query_top_k=1024
        )
        dv = []
        for i in tqdm(range(0, len(chunks), 32), desc="encode chunks", unit="batch"):
            dv += embed_sparse(engine, cfg, chunks[i : i + 32], False)
        qv = embed_sparse(engine, cfg, [queries[q] for q in judged], True)
        tokens = _token_arrays(engine, [queries[q] for q in judged], chunks)
    finally:
        engine.close()

    np.savez(
        cache,
        allow_pickle=True,  # numpy's default, named: the ** arrays below cannot then be taken for it
        owner=np.array(owner),
        doc_ids=np.array([d.id for d in docs]),
        judged=np.array(judged),
        **_flat(qv, "q"),
        **_flat(dv, "d"),
        **tokens,
    )


def from_collection(folder: Path, collection: Path, cache: Path, dense_cache: Path | None) -> None:
    """The caches from a collection the stack indexed (`eval beir --work-dir`, `bench/run.sh` with ADAPTER_WORK):
    its stored chunk vectors as served (learned sparse already cut to its sparse_top_k; dense as indexed),
    so nothing but the judged queries is encoded, with the collection's own config."""
    import sqlite3

    from lodestar.retrieve.eval.beir import read_beir
    from lodestar.retrieve.prepare import embed_sparse, embed_texts
    from lodestar.retrieve.types import CollectionConfig
    from lodestar.services.cli.common import settings
    from lodestar.services.runtime import Runtime

    found = sorted(collection.rglob("store.sqlite3"))
    if len(found) != 1:
        raise SystemExit(f"{collection}: expected one collection (store.sqlite3) below it, found {len(found)}")
    conn = sqlite3.connect(f"file:{found[0]}?mode=ro", uri=True)
    try:
        cfg = CollectionConfig(
            **{"query_idf": False, **json.loads(conn.execute("SELECT json FROM config").fetchone()[0])}
        )
        rows = conn.execute(
            "SELECT c.doc_id, c.char_start, c.char_end, c.vector, s.terms, s.weights, d.text FROM chunks c "
            "JOIN docs d ON d.id = c.doc_id LEFT JOIN sparse_chunks s ON s.chunk_id = c.chunk_id ORDER BY c.chunk_id"
        ).fetchall()
    finally:
        conn.close()
    if cfg.sparse != "learned":
        raise SystemExit(f"{found[0].parent}: sparse={cfg.sparse!r}; a learned-sparse collection is needed")
    docs, queries, qrels = read_beir(folder)
    judged = [q for q in queries if q in qrels]
    row_of = {d.id: i for i, d in enumerate(docs)}
    owner = np.array([row_of[r[0]] for r in rows])
    chunks = [r[6][r[1] : r[2]] for r in rows]
    dv = [(np.frombuffer(r[4] or b"", "<u4").astype(np.int64), np.frombuffer(r[5] or b"", "<f4")) for r in rows]
    engine = Runtime(settings(), [])._build_engine(None)
    try:
        qv = embed_sparse(engine, replace(cfg, query_top_k=1024), [queries[q] for q in judged], True)
        tokens = _token_arrays(engine, [queries[q] for q in judged], chunks)
        if dense_cache is not None:
            d = np.stack([np.frombuffer(r[3], "<f4") for r in rows])
            np.savez(
                dense_cache,
                owner=owner,
                judged=np.array(judged),
                d=d,
                q=embed_texts(engine, cfg, [queries[q] for q in judged], d.shape[1], True),
            )
    finally:
        engine.close()
    np.savez(
        cache,
        allow_pickle=True,  # numpy's default, named: the ** arrays below cannot then be taken for it
        owner=np.array(owner),
        doc_ids=np.array([d.id for d in docs]),
        judged=np.array(judged),
        **_flat(qv, "q"),
        **_flat(dv, "d"),
        **tokens,
    )


def _token_arrays(engine: EmbeddingEngine, query_texts: list[str], chunks: list[str]) -> dict[str, np.ndarray]:
    """The cache's vocabulary size and each query's and chunk's own token ids (weight 1): the
    IDF-of-text and own-token variants read them."""
    tok = engine.backbone.tokenizer

    def ids(text: str) -> np.ndarray:
        return np.asarray(tok(text, add_special_tokens=False)["input_ids"])

    return {
        "vocab": np.asarray(int(engine.backbone.model.get_output_embeddings().weight.shape[0])),
        **_flat([(t, np.ones(len(t))) for t in map(ids, query_texts)], "qt"),
        **_flat([(t, np.ones(len(t))) for t in map(ids, chunks)], "ct"),
    }


def _flat(rows: list, name: str) -> dict[str, np.ndarray]:
    return {
        f"{name}_len": np.array([len(r[0]) for r in rows]),
        f"{name}_ids": np.concatenate([r[0] for r in rows]),
        f"{name}_w": np.concatenate([r[1] for r in rows]).astype(np.float32),
    }


def fold_map(stem_words: bool) -> np.ndarray:
    """(V,) representative token id of each vocabulary id: tokens spelling the same word up to case and a
    leading space (and, with stem_words, a plural) share the smallest id among them."""
    from lodestar.backbone.loader import BackboneConfig, load_tokenizer
    from lodestar.services.cli.common import settings
    from lodestar.text import stem

    s = settings()
    tok = load_tokenizer(BackboneConfig(model=s.model, cache_dir=s.cache_dir))
    rep: dict[str, int] = {}
    out = np.arange(len(tok), dtype=np.int64)
    for i in range(len(tok)):
        key = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)]).strip().lower()
        if not key:
            continue
        if stem_words and key.isalpha():
            key = stem(key)
        out[i] = rep.setdefault(key, i)
    return out


def max_per_cell(rows: np.ndarray, cols: np.ndarray, w: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A matrix of the largest of the weights that land on each (row, col)."""
    order = np.lexsort((-w, cols, rows))
    rows, cols, w = rows[order], cols[order], w[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])]
    return sp.csr_matrix((w[first], (rows[first], cols[first])), shape=shape)


def fold(m: sp.csr_matrix, rep: np.ndarray, how: str = "max") -> sp.csr_matrix:
    """Each row's weights moved onto the representative ids (`fold_map`), the max (or sum) per class."""
    coo = m.tocoo()
    if how == "sum":
        out = sp.csr_matrix((coo.data, (coo.row, rep[coo.col])), shape=m.shape)
        out.sum_duplicates()
        return out
    return max_per_cell(coo.row, rep[coo.col], coo.data, m.shape)


def ranked_docs(row: np.ndarray, doc_of: np.ndarray, depth: int, positive: bool = True) -> list[tuple[str, float]]:
    """One query's row scores (row r belongs to document doc_of[r]) -> its top `depth` documents, each
    scored by its best row (a sparse score of 0 is no match; a cosine may be negative)."""
    out: dict[str, float] = {}
    for c in np.argsort(-row, kind="stable")[: max(400, 8 * depth)]:
        if (positive and row[c] <= 0) or len(out) == depth:
            break
        out.setdefault(str(doc_of[c]), float(row[c]))
    return list(out.items())


def per_query_ndcg(rankings: list[list[str]], qids: list[str], qrels: dict) -> np.ndarray:
    from lodestar.retrieve.eval.beir import ndcg_at

    return np.array([ndcg_at(r, qrels[q]) for r, q in zip(rankings, qids)])


def scored(name: str, per_query: np.ndarray, **extra: object) -> dict:
    """One result row: the mean nDCG@10 reported, the per-query values kept for the cross-validated pick."""
    row = {"variant": name, "ndcg@10": round(float(per_query.mean()), 4), **extra, "_per_query": per_query}
    print(json.dumps({k: v for k, v in row.items() if k != "_per_query"}), file=sys.stderr)
    return row


def cross_validated(rows: list[dict], qids: list[str], family: str, folds: int = 2) -> dict:
    """The honest figure for "the best of these variants": for each fold k of the queries (the stable
    hash of `retrieve.eval.beir.in_fold`), pick the variant with the best nDCG@10 on the other folds'
    queries and score only fold k with it; the mean over all queries of those held-out scores."""
    from lodestar.retrieve.eval.beir import in_fold

    held, picks = np.zeros(len(qids)), []
    for k in range(folds):
        inside = np.array([in_fold(q, f"{k}/{folds}") for q in qids])
        best = max(rows, key=lambda r: float(r["_per_query"][~inside].mean()))
        held[inside] = best["_per_query"][inside]
        picks.append(best["variant"])
    return scored(
        f"cross-validated pick among the {family} variants ({folds} folds: picked on the other "
        "folds' queries, scored on the held-out one)",
        held,
        picks=picks,
    )


def hybrid(
    args: argparse.Namespace,
    sides: dict[str, sp.csr_matrix],
    doc_of: np.ndarray,
    owner: np.ndarray,
    judged: list[str],
    qrels: dict,
) -> list[dict]:
    """Dense alone and the hybrid of dense with each learned-sparse side (name -> (queries, chunks) scores),
    fused as the engine fuses: each side's top 100 documents by best chunk, then RRF and min-max weighting
    (`retrieve.fusion`)."""
    from lodestar.retrieve.fusion import rrf, weighted

    if not args.dense_cache.exists():
        encode_dense(args.beir, args.dense, args.dense_cache)
    z = np.load(args.dense_cache)
    if not np.array_equal(z["owner"], owner):
        raise SystemExit(f"{args.dense_cache} was chunked differently from {args.cache}")
    row = {str(q): i for i, q in enumerate(z["judged"])}
    dense_scores = z["q"][[row[q] for q in judged]] @ z["d"].T  # (queries, chunks), cosine
    dense = [ranked_docs(dense_scores[i], doc_of, 100, positive=False) for i in range(len(judged))]

    def score(lists: list) -> np.ndarray:
        return per_query_ndcg([[d for d, _ in ranked[:10]] for ranked in lists], judged, qrels)

    out = [scored(f"dense ({args.dense}, bidirectional)", score(dense))]
    for name, scores in sides.items():
        sparse = [ranked_docs(row, doc_of, 100) for row in scores.toarray()]
        out.append(scored(f"hybrid with {name}, rrf", score([rrf([d, s]) for d, s in zip(dense, sparse)])))
        for a in (float(x) for x in args.alphas.split(",")):
            out.append(
                scored(
                    f"hybrid with {name}, weighted alpha {a}",
                    score([weighted(d, s, alpha=a) for d, s in zip(dense, sparse)]),
                )
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("beir", type=Path)
    ap.add_argument("adapter")
    ap.add_argument("--cache", type=Path, required=True, help="npz of the encoded vectors (written when missing)")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--fold", default="", help="k/n: score only the queries of fold k (the adapter was trained on the rest)"
    )
    ap.add_argument(
        "--dense",
        default="",
        help="bidirectional dense adapter: also score the hybrid with query_idf (as the engine fuses)",
    )
    ap.add_argument(
        "--dense-cache", type=Path, help="npz of the dense vectors (written when missing; needed with --dense)"
    )
    ap.add_argument("--alphas", default="0.3,0.5,0.7", help="weighted-fusion alphas of the hybrid (1 = dense only)")
    ap.add_argument(
        "--from-collection",
        type=Path,
        help="a folder holding one collection the stack indexed (eval beir "
        "--work-dir): take the chunk vectors (and with --dense-cache the dense ones) from its store, "
        "encode only the queries; `adapter` is then only a label",
    )
    args = ap.parse_args()
    if args.dense and not args.dense_cache:
        ap.error("--dense needs --dense-cache")
    from lodestar.retrieve.bm25 import BM25Index
    from lodestar.retrieve.eval.beir import in_fold, read_beir
    from lodestar.retrieve.postings import idf_weight

    if args.fold:
        in_fold("", args.fold)  # a malformed k/n fails here, not after the encoding
    t0 = time.perf_counter()
    encoded = not args.cache.exists()
    if encoded and args.from_collection:
        from_collection(args.beir, args.from_collection, args.cache, args.dense_cache if args.dense else None)
    elif encoded:
        encode(args.beir, args.adapter, args.cache)
    docs, queries, qrels = read_beir(args.beir)
    z = np.load(args.cache)
    vocab = int(z["vocab"])

    def csr(name: str, binary: bool = False) -> sp.csr_matrix:
        ptr = np.concatenate([[0], np.cumsum(z[f"{name}_len"])])
        m = sp.csr_matrix((z[f"{name}_w"].astype(np.float64), z[f"{name}_ids"], ptr), shape=(len(ptr) - 1, vocab))
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def topk(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
        m = m.copy()
        for i in range(m.shape[0]):
            row = m.data[m.indptr[i] : m.indptr[i + 1]]
            if row.size > k:
                row[row < np.partition(row, -k)[-k]] = 0
        m.eliminate_zeros()
        return m

    Q, D = topk(csr("q"), 64), topk(csr("d"), 256)  # what a collection serves by default
    Qtok, Ctok = csr("qt", True), csr("ct", True)
    owner, doc_ids, judged = z["owner"], z["doc_ids"], [str(q) for q in z["judged"]]
    picked = np.array([i for i, q in enumerate(judged) if not args.fold or in_fold(q, args.fold)], dtype=np.int64)
    if not picked.size:
        raise SystemExit(f"fold {args.fold} holds none of the {len(judged)} judged queries")
    scored_ids = [judged[j] for j in picked]
    n = D.shape[0]

    def idf_of(dm: sp.csr_matrix) -> np.ndarray:
        """Each vocabulary entry's BM25 IDF over the rows of `dm` that hold it."""
        return np.array([idf_weight(n, int(df)) for df in np.diff(dm.tocsc().indptr)])

    idf_index, idf_text = idf_of(D), idf_of(Ctok)  # over the stored vectors, over the chunks' own tokens
    diag = sp.diags
    nnz = np.diff(D.indptr)

    def ndcg(qm: sp.csr_matrix, dm: sp.csr_matrix, of: np.ndarray = owner) -> np.ndarray:
        scores = (qm[picked] @ dm.T).toarray()  # (scored queries, rows of dm), each row a chunk of document of[row]
        return per_query_ndcg([[d for d, _ in ranked_docs(row, doc_ids[of], 10)] for row in scores], scored_ids, qrels)

    own = Q.multiply(Qtok > 0).tocsr()  # the query's weights on its own tokens only
    mass = np.asarray(D.sum(axis=1)).ravel()

    def saturated(k1: float, b: float) -> sp.csr_matrix:  # BM25's tf saturation, chunk weights as tf
        m = D.copy()
        norm = np.repeat(1 - b + b * mass / mass.mean(), np.diff(m.indptr))
        m.data = m.data * (k1 + 1) / (m.data + k1 * norm)
        return m

    def normed(b: float) -> sp.csr_matrix:  # chunk scores divided by 1 - b + b * (non-zeros / mean non-zeros)
        return sp.csr_matrix(diag(1 / (1 - b + b * nnz / nnz.mean())) @ D)

    coo = D.tocoo()  # each document as one vector: per term, the largest weight among its chunks
    whole = max_per_cell(owner[coo.row], coo.col, coo.data, (len(doc_ids), vocab))
    variants = {
        "served dot product (query 64, chunk 256 weights)": (Q, D),
        "query restricted to its own tokens": (own, D),
        "query = IDF of its own tokens (inference-free)": (Qtok @ diag(idf_text), D),
        "query weights x IDF of chunk tokens": (Q @ diag(idf_text), D),
        "query weights x IDF of stored vectors (query_idf)": (Q @ diag(idf_index), D),
        "query weights x IDF^0.5 of stored vectors": (Q @ diag(np.sqrt(idf_index)), D),
        "query weights x IDF^2 of stored vectors": (Q @ diag(idf_index**2), D),
        "query_idf, expansion terms (not in the query text) at half weight": (0.5 * (Q + own) @ diag(idf_index), D),
        **{
            f"query_idf + chunk length normalisation b={b}": (Q @ diag(idf_index), normed(b)) for b in (0.25, 0.5, 0.75)
        },
        "query_idf, chunk weights BM25-saturated k1=1.2 b=0.75": (Q @ diag(idf_index), saturated(1.2, 0.75)),
        "query_idf, chunk weights BM25-saturated k1=4 b=0": (Q @ diag(idf_index), saturated(4.0, 0.0)),
        "query_idf + the query's own tokens at their IDF": ((Q + Qtok) @ diag(idf_index), D),
        **{
            f"query_idf, query cut to {k} weights instead of 64": (topk(csr("q"), k) @ diag(idf_index), D)
            for k in (32, 128, 256)
        },
    }
    for stem_words in (False, True):  # one weight per word form: the case and space variants of a token merged
        rep = fold_map(stem_words)
        label = f"vocabulary folded (case, leading space{', plural' if stem_words else ''})"
        for how in ("max", "sum"):
            fq, fd = fold(Q, rep, how), fold(D, rep, how)
            variants[f"query_idf, {label}, {how} per word"] = (fq @ diag(idf_of(fd)), fd)
        fq, fd = topk(fold(csr("q"), rep), 64), topk(fold(csr("d"), rep), 256)
        variants[f"query_idf, {label} before the top-k cut, max"] = (fq @ diag(idf_of(fd)), fd)
    unit = diag(1 / np.sqrt(np.asarray(D.multiply(D).sum(axis=1)).ravel())) @ D

    def feedback(base: sp.csr_matrix, m: int, beta: float, dm: sp.csr_matrix = D) -> sp.csr_matrix:
        """Rocchio as served (`retrieve.feedback.feedback_query`): the unit-length query plus beta times the
        mean of its first (query_idf, against `dm`: with length normalisation when that is served too)
        ranking's top m unit-length chunks cut to 64 terms, IDF-scaled."""
        first = (base @ diag(idf_index) @ dm.T).toarray()  # (queries, chunks)
        centroid = np.stack([np.asarray(unit[np.argsort(-row)[:m]].mean(axis=0)).ravel() for row in first])
        centroid[centroid < np.partition(centroid, -64, axis=1)[:, -64:-63]] = 0  # its 64 largest terms
        return sp.csr_matrix(diag(1 / sp.linalg.norm(base, axis=1)) @ base + beta * centroid) @ diag(idf_index)

    half = 0.5 * (Q + own)  # expansion terms (not in the query text) at half weight
    fed: dict[str, sp.csr_matrix] = {}
    for m, beta in ((3, 0.5), (3, 1.0), (10, 0.5), (10, 1.0)):  # Rocchio feedback from the top m chunks
        name = f"query_idf + pseudo-relevance feedback (top {m} chunks, beta {beta}, 64 terms)"
        fed[name] = feedback(Q, m, beta)
        variants[name] = (fed[name], D)
        for b in (0.25, 0.5):  # both rankings length-normalised, as `length_norm` serves it
            fed[f"{name} + length normalisation b={b}"] = feedback(Q, m, beta, normed(b))
            variants[f"{name} + chunk length normalisation b={b}"] = (
                fed[f"{name} + length normalisation b={b}"],
                normed(b),
            )
    for m, beta in ((3, 0.5), (3, 1.0)):  # the two that each added a little, together
        name = f"query_idf, expansion terms at half weight, + pseudo-relevance feedback (top {m} chunks, beta {beta}, 64 terms)"
        fed[name] = feedback(half, m, beta)
        variants[name] = (fed[name], D)
        variants[f"{name} + chunk length normalisation b=0.25"] = (feedback(half, m, beta, normed(0.25)), normed(0.25))
    results = [scored(name, ndcg(qm, dm)) for name, (qm, dm) in variants.items()]
    results.append(
        scored(
            "query_idf, each document one vector (max over its chunks)",
            ndcg(Q @ diag(idf_index), whole, np.arange(len(doc_ids))),
        )
    )
    learned = list(results)
    results.append(cross_validated(learned, scored_ids, "learned-sparse"))
    bm25 = BM25Index()
    bm25.add(np.arange(len(docs), dtype=np.int64), [d.text for d in docs])
    hits = bm25.search([queries[q] for q in scored_ids], 10)
    results.append(
        scored(
            "reference: BM25 on whole documents (the stack's bm25 side), same queries",
            per_query_ndcg([[docs[i].id for i, _ in h] for h in hits], scored_ids, qrels),
        )
    )
    if args.dense:

        def side(name: str) -> sp.csr_matrix:  # the chunks a fed query is scored against
            return normed(float(name.rsplit("b=", 1)[1])) if "length normalisation b=" in name else D

        sides = {
            "query_idf": (Q @ diag(idf_index), D),
            "query_idf + length normalisation b=0.5": (Q @ diag(idf_index), normed(0.5)),
        }
        sides |= {name.replace("pseudo-relevance ", ""): (qm, side(name)) for name, qm in fed.items()}
        fused = hybrid(
            args,
            {name: qm[picked] @ dm.T for name, (qm, dm) in sides.items()},
            doc_ids[owner],
            owner,
            scored_ids,
            qrels,
        )
        results += fused + [cross_validated(fused[1:], scored_ids, "hybrid")]
    for row in results:
        row.pop("_per_query")
    report = {
        "dataset": str(args.beir),
        "adapter": args.adapter,
        "fold": args.fold or None,
        "queries": len(picked),
        "chunks": n,
        "variants": results,
        "encoded": encoded,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
