"""BEIR evaluation helpers: the folder reader, nDCG@10 by hand, and the query folds used to
cross-validate an adapter trained on a collection's own judgements (bench/adapters/triplets.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lodestar.errors import InvalidInput
from lodestar.retrieve.eval.beir import in_fold, ndcg_at, read_beir

ROOT = Path(__file__).resolve().parents[2]


def beir(tmp: Path, n_queries: int = 12) -> Path:
    (tmp / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"wing {i}", "text": f"lift and drag of wing number {i}"} for i in range(6)]
    (tmp / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    qs = [{"_id": str(q), "text": f"drag of wing {q % 6}"} for q in range(n_queries)]
    (tmp / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\td{q % 6}\t1" for q in range(n_queries)] + ["0\td5\t0"]
    (tmp / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return tmp


def test_read_beir_joins_title_and_drops_zero_gains(tmp_path: Path) -> None:
    docs, queries, qrels = read_beir(beir(tmp_path))
    assert docs[0].id == "d0" and docs[0].text == "wing 0. lift and drag of wing number 0"
    assert queries["3"] == "drag of wing 3"
    assert qrels["0"] == {"d0": 1}  # the 0-gain judgement is not a relevant document


def test_read_beir_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not a BEIR folder: corpus.jsonl is missing"):
        read_beir(tmp_path)


def test_ndcg_by_hand() -> None:
    gains = {"a": 2, "b": 1}
    assert ndcg_at(["a", "b", "x"], gains) == pytest.approx(1.0)
    dcg = 1 / math.log2(2) + 2 / math.log2(3)  # b first, a second
    assert ndcg_at(["b", "a"], gains) == pytest.approx(dcg / (2 + 1 / math.log2(3)))
    assert ndcg_at(["x", "y"], gains) == 0.0
    assert ndcg_at(["a"], {}) == 0.0


def test_folds_partition_the_queries_stably() -> None:
    ids = [str(i) for i in range(400)]
    folds = [[q for q in ids if in_fold(q, f"{k}/3")] for k in range(3)]
    assert sorted(q for f in folds for q in f) == sorted(ids)  # each query in exactly one fold
    assert all(90 < len(f) < 180 for f in folds)
    assert in_fold("1", "1/2") and not in_fold("1", "0/2")  # a hash of the id, the same on every machine


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_fold_names_the_form(spec: str) -> None:
    with pytest.raises(InvalidInput, match="k/n with 0 <= k < n"):
        in_fold("1", spec)


def test_triplets_leave_the_held_out_fold_out(tmp_path: Path) -> None:
    folder = beir(tmp_path / "beir")
    out = tmp_path / "t.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-P",
            str(ROOT / "bench/adapters/triplets.py"),
            "beir",
            str(folder),
            str(out),
            "--exclude-fold",
            "0/2",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kept = {f"drag of wing {q % 6}" for q in range(12) if not in_fold(str(q), "0/2")}
    assert rows and {r["query"] for r in rows} <= kept
    assert len(rows) == sum(not in_fold(str(q), "0/2") for q in range(12))
    assert all(r["negatives"] and r["negatives"][0] != r["positive"] for r in rows)  # a BM25 neighbour, not relevant


def _sparse_variants():
    """bench/adapters/sparse_variants.py as a module (a script folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sparse_variants", ROOT / "bench/adapters/sparse_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vocabulary_fold_keeps_the_largest_or_sums_each_word_form():
    import numpy as np
    import scipy.sparse as sp

    sv = _sparse_variants()
    m = sp.csr_matrix(np.array([[1.0, 3.0, 0.0, 2.0], [0.0, 0.5, 4.0, 0.0]]))
    rep = np.array([0, 0, 2, 2])  # ids 0 and 1 spell one word form, 2 and 3 another
    assert sv.fold(m, rep).toarray().tolist() == [[3.0, 0.0, 2.0, 0.0], [0.5, 0.0, 4.0, 0.0]]
    assert sv.fold(m, rep, "sum").toarray().tolist() == [[4.0, 0.0, 2.0, 0.0], [0.5, 0.0, 4.0, 0.0]]
    # documents as one vector: rows 0 and 1 are chunks of one document, the largest weight per term wins
    whole = sv.max_per_cell(np.array([0, 0, 0, 0]), np.array([1, 3, 1, 2]), np.array([3.0, 2.0, 0.5, 4.0]), (1, 4))
    assert whole.toarray().tolist() == [[0.0, 3.0, 4.0, 2.0]]


def test_eval_beir_searches_more_queries_than_one_search_takes(tiny_engine, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SQuAD has 1,278 judged questions and a search takes at most 1,024: the evaluation splits them,
    and the scores are those of one search with no limit."""
    from lodestar.retrieve.engine import RetrievalEngine
    from lodestar.retrieve.eval import beir as beir_mod

    folder = beir(tmp_path / "set", n_queries=12)
    whole = beir_mod.eval_beir(tiny_engine, folder, retrievers=("dense", "bm25", "hybrid"), progress=False)
    sizes: list[int] = []
    search = RetrievalEngine.search

    def limited(self, name, request):  # type: ignore[no-untyped-def]
        sizes.append(len(request.queries))
        return search(self, name, request)

    monkeypatch.setattr(RetrievalEngine, "search", limited)
    monkeypatch.setattr(beir_mod.search_all, "__defaults__", (5,))  # as if a search took 5 queries
    split = beir_mod.eval_beir(tiny_engine, folder, retrievers=("dense", "bm25", "hybrid"), progress=False)
    assert max(sizes) == 5 and sum(sizes) == 12 * len(split)
    assert [r["ndcg@10"] for r in split] == [r["ndcg@10"] for r in whole] and split[0]["queries"] == 12


def test_eval_beir_work_dir_resumes_and_reuses_the_index(tiny_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--work-dir keeps the indexed corpus under a key of (documents, config, model, adapters): a rerun
    encodes nothing, an interrupted one only its missing batches, another config gets its own index."""
    from lodestar.retrieve.engine import RetrievalEngine
    from lodestar.retrieve.eval.beir import eval_beir, index_key
    from lodestar.retrieve.types import CollectionConfig

    folder = beir(tmp_path / "set")
    work = tmp_path / "work"
    cfg = CollectionConfig(name="eval", mode="mean")
    first = eval_beir(
        tiny_engine, folder, retrievers=("dense", "bm25"), config=cfg, batch_docs=2, progress=False, work_dir=work
    )
    assert [r["reused_documents"] for r in first] == [0, 0]
    again = eval_beir(
        tiny_engine, folder, retrievers=("dense", "hybrid"), config=cfg, batch_docs=2, progress=False, work_dir=work
    )
    assert again[0]["reused_documents"] == 6 and again[0]["ndcg@10"] == first[0]["ndcg@10"]
    (index,) = list(work.iterdir())
    assert index.name == f"set-{index_key(read_beir(folder)[0], cfg, tiny_engine)}"
    stored = RetrievalEngine(index, tiny_engine)  # a run that stopped before its last batch
    stored.delete("eval", ["d5"])
    stored.close()
    resumed = eval_beir(
        tiny_engine, folder, retrievers=("dense",), config=cfg, batch_docs=2, progress=False, work_dir=work
    )
    assert resumed[0]["reused_documents"] == 4 and resumed[0]["ndcg@10"] == first[0]["ndcg@10"]
    other = eval_beir(
        tiny_engine,
        folder,
        retrievers=("dense",),
        config=CollectionConfig(name="eval", mode="last"),
        batch_docs=2,
        progress=False,
        work_dir=work,
    )
    assert other[0]["reused_documents"] == 0 and len(list(work.iterdir())) == 2
