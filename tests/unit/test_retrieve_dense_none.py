"""Sparse-only collections (dense='none'): served by an embedder that has only the real bundled
tokenizer and refuses every forward, they chunk, upsert, filter, search, snapshot, replay, rebuild and
run indexing jobs as any collection; `eval beir --retriever bm25` loads no model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinymodel import CACHE_DIR, FIXTURES

from lodestar.backbone import BackboneConfig
from lodestar.errors import InvalidInput
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.eval.beir import read_beir
from lodestar.retrieve.eval.lexical import TokenizerOnly
from lodestar.retrieve.jobs import JobManager, JobsConfig
from lodestar.retrieve.types import CollectionConfig, Document, Filter, SearchRequest

ROOT = Path(__file__).resolve().parents[2]
BEIR = FIXTURES / "squad_beir"


@pytest.fixture(scope="module")
def lexical() -> TokenizerOnly:
    return TokenizerOnly(BackboneConfig(cache_dir=CACHE_DIR))


@pytest.fixture
def engine(tmp_path: Path, lexical: TokenizerOnly):  # type: ignore[no-untyped-def]
    e = RetrievalEngine(tmp_path / "collections", lexical, calibrate=True)
    e.create(CollectionConfig(name="bm25", dense="none", chunk_tokens=64, chunk_overlap=8))
    yield e
    e.close()


def docs() -> list[Document]:
    out, _, _ = read_beir(BEIR)
    return [Document(d.id, d.text, {"article": d.id.split("_")[0]}) for d in out]


def search(engine: RetrievalEngine, query: str, **kw: object) -> list[str]:
    return [h.id for h in engine.search("bm25", SearchRequest([query], **kw))[0]]  # type: ignore[arg-type]


def test_upsert_search_filters_without_a_forward(engine: RetrievalEngine) -> None:
    written, chunks = engine.upsert("bm25", docs())
    assert written == 80 and chunks > 80  # chunked by the model's tokens (64 each)
    assert search(engine, "Who was the leader of the Norse raiders?", retriever="sparse")[0] == "0_0"
    only = search(engine, "Norman complexity classes", retriever="sparse", filters=(Filter("article", "eq", "1"),))
    assert only and all(i.startswith("1_") for i in only)
    stats = engine.stats("bm25")
    assert (stats.dense, stats.dimensions, stats.index_vectors, stats.chunks) == ("none", 0, 0, chunks)
    assert stats.calibration is None  # nothing to fuse: no calibration, no forward
    with pytest.raises(InvalidInput, match="only a collection with both sides has a hybrid fusion to calibrate"):
        engine.calibrate("bm25")
    for retriever in ("dense", "hybrid"):
        with pytest.raises(InvalidInput, match="created with dense='none'; use retriever='sparse'"):
            search(engine, "Normans", retriever=retriever)


def test_snapshot_replay_rebuild_and_delete(engine: RetrievalEngine, lexical: TokenizerOnly) -> None:
    engine.upsert("bm25", docs()[:40])
    engine.snapshot("bm25")
    engine.upsert("bm25", docs()[40:])  # after the snapshot: replayed at the next start
    assert engine.delete("bm25", ["0_0"]) == 1
    engine.close()
    again = RetrievalEngine(engine.root, lexical)
    try:
        assert again.stats("bm25").status == "ok" and again.stats("bm25").documents == 79
        hits = [h.id for h in again.search("bm25", SearchRequest(["complexity class"], retriever="sparse"))[0]]
        assert hits and "0_0" not in hits and hits[0].startswith("1_")
        assert again.rebuild("bm25").documents == 79
        assert again.config("bm25").dense == "none"
    finally:
        again.close()


def test_bad_configs_name_the_valid_values(engine: RetrievalEngine) -> None:
    with pytest.raises(InvalidInput, match="leave nothing to search"):
        engine.create(CollectionConfig(name="empty", dense="none", sparse="none"))
    with pytest.raises(InvalidInput, match="unknown dense kind 'faiss': valid kinds are model, none"):
        engine.create(CollectionConfig(name="odd", dense="faiss"))


def test_an_indexing_job_fills_a_sparse_only_collection(
    engine: RetrievalEngine, lexical: TokenizerOnly, tmp_path: Path
) -> None:
    jobs = JobManager(engine, lexical, JobsConfig(data_dir=tmp_path, chunk_docs=16))
    try:
        job = jobs.open("bm25", "mem")
        jobs.stage(job, [(i + 1, json.dumps({"id": d.id, "text": d.text}).encode()) for i, d in enumerate(docs())])
        jobs.seal(job)
        deadline = time.monotonic() + 60
        while not jobs.get(job).finished and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs.get(job).state == "done", jobs.get(job)
    finally:
        jobs.close()
    assert engine.stats("bm25").documents == 80


def test_eval_beir_bm25_loads_no_model(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from lodestar.services.cli import main\n"
        f"assert main(['eval', 'beir', {str(BEIR)!r}, '--retriever', 'bm25', '--quiet']) == 0\n"
        "loaded = [m for m in ('lodestar.embed.engine', 'transformers.models.llama.modeling_llama') if m in sys.modules]\n"
        "print(json.dumps({'loaded': loaded}))\n"
    )
    env = {**os.environ, "LODESTAR_CACHE_DIR": str(CACHE_DIR), "LODESTAR_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result, check = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert check == {"loaded": []}
    assert result["retriever"] == "bm25" and result["queries"] == 60 and result["ndcg@10"] > 0.7
