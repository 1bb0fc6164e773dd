"""Self-calibrating hybrid fusion (retrieve/calibrate.py): a collection whose dense side is useless
(random vectors) calibrates to a fusion that ranks like its sparse side, one whose sparse side is
useless (no word of a query shares its surface form with the rest of its document) to one that
ranks like its dense side; calibration is deterministic for a seed, resumes after an interruption,
refreshes when the collection doubles, and a collection too small says so and uses the fallback.

The two embedders are deliberately built to be useless or useful; the retrieval engine, its
indexes, fusion and calibration are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from pathlib import Path

import numpy as np
import pytest
from tinymodel import FIXTURES

from lodestar.embed.modes import get_mode
from lodestar.embedding import EmbedOptions, EmbedResult
from lodestar.errors import Unavailable
from lodestar.retrieve.calibrate import FALLBACK, MIN_CHUNKS, PARTIAL, REFRESH_FACTOR, short_alpha
from lodestar.retrieve.engine import RetrievalEngine
from lodestar.retrieve.eval.beir import ndcg_at, read_beir
from lodestar.retrieve.types import CollectionConfig, Document, SearchRequest

D = 48
WORD = re.compile(r"[^\W_]+")


def unit(seed_text: str) -> np.ndarray:
    v = np.random.default_rng(int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little"))
    x = v.standard_normal(D)
    return x / np.linalg.norm(x)


class Backbone:
    hidden_size = D
    model_id = "calibration-test"


class Embedder:
    """Each word's vector is that of its concept (`concept_of`, identity by default); a text is the
    normalised sum. `random=True`: every text gets an unrelated random vector (a useless dense side)."""

    def __init__(self, random: bool = False, concept_of: dict[str, str] | None = None, fail_after: int = -1) -> None:
        self.backbone = Backbone()
        self.random = random
        self.concept_of = concept_of or {}
        self.calls = 0
        self.fail_after = fail_after  # embed calls before it fails (a crashed model), -1 = never

    def embed(self, texts: list[str], options: EmbedOptions | None = None, timeout: float | None = None) -> EmbedResult:
        if self.calls == self.fail_after:
            raise Unavailable("the model process died")
        self.calls += 1
        out = np.zeros((len(texts), D), dtype=np.float32)  # (N, D)
        for i, t in enumerate(texts):
            if self.random:
                out[i] = unit("random " + t)
                continue
            for w in WORD.findall(t.lower()):
                out[i] += unit(self.concept_of.get(w, w))
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-12)
        return EmbedResult(out, None, [1] * len(texts), [False] * len(texts), "fake", "mean")  # type: ignore[arg-type]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in WORD.finditer(text)]

    def check_mode(self, mode: str, prompt: str = "") -> None:
        get_mode(mode).check_prompt(prompt)


def squad() -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    return read_beir(FIXTURES / "squad_beir")


def synonym_corpus(n_docs: int = 90) -> tuple[list[Document], dict[str, str], list[str]]:
    """Documents of 4 sentences about 6 concepts each; sentence j writes every concept in its own j-th
    surface form, so a sentence shares no word with the rest of its document (BM25 cannot find it)
    while the concepts, which the embedder sees, are shared. Also per document a query in a fifth
    form that no document uses."""
    rng = np.random.default_rng(7)
    letters = list(string.ascii_lowercase)
    forms = [["".join(rng.choice(letters, 8)) for _ in range(5)] for _ in range(300)]  # concept -> 5 words
    concept_of = {w: f"concept{c}" for c, ws in enumerate(forms) for w in ws}
    docs, queries = [], []
    for i in range(n_docs):
        topic = rng.choice(len(forms), 6, replace=False)
        sentences = [" ".join(forms[c][j] for c in rng.choice(topic, 5)) + "." for j in range(5)]
        docs.append(Document(f"s{i}", " ".join(sentences[:4])))
        queries.append(sentences[4])
    return docs, concept_of, queries


def collection(tmp: Path, embedder: Embedder, docs: list[Document], **kw: object) -> RetrievalEngine:
    engine = RetrievalEngine(tmp / "collections", embedder, **kw)  # type: ignore[arg-type]
    engine.create(CollectionConfig(name="c", chunk_tokens=0))
    engine.upsert("c", docs)
    return engine


def top(engine: RetrievalEngine, queries: list[str], retriever: str, **kw: object) -> list[list[str]]:
    hits = engine.search("c", SearchRequest(queries=queries, k=10, retriever=retriever, **kw))  # type: ignore[arg-type]
    return [[h.id for h in row] for row in hits]


def test_useless_dense_side_calibrates_to_the_sparse_ranking(tmp_path: Path) -> None:
    docs, queries, qrels = squad()
    engine = collection(tmp_path, Embedder(random=True), docs)
    record = engine.calibrate("c")
    assert not record["fallback"] and record["pseudo_queries"] >= 64
    for kind in ("removed", "kept"):  # inverse cloze, and the sentence left in its chunk
        assert record["dense_alone"][kind]["held_out"] < 0.2 < 0.4 < record["sparse_alone"][kind]["held_out"]
    assert record["choice"]["fusion"] != "rrf" and record["choice"]["alpha"] <= 0.3
    assert record["chosen"]["worst_lower_bound"]["held_out"] >= -0.1
    qids = list(qrels)
    texts = [queries[q] for q in qids]
    sparse, auto, rrf = (
        top(engine, texts, r, fusion=f) for r, f in (("sparse", "auto"), ("hybrid", "auto"), ("hybrid", "rrf"))
    )
    score = {
        name: np.mean([ndcg_at(r, qrels[q]) for q, r in zip(qids, runs)])
        for name, runs in (("sparse", sparse), ("auto", auto), ("rrf", rrf))
    }
    assert score["auto"] >= score["sparse"] - 0.02 > score["rrf"]  # RRF gives the random side a vote
    assert np.mean([a[0] == s[0] for a, s in zip(auto, sparse)]) >= 0.9
    assert engine.stats("c").calibration == record
    engine.close()


def test_useless_sparse_side_calibrates_to_the_dense_ranking(tmp_path: Path) -> None:
    docs, concept_of, held_back = synonym_corpus()
    engine = collection(tmp_path, Embedder(concept_of=concept_of), docs)
    record = engine.calibrate("c")
    assert record["sparse_alone"]["removed"]["held_out"] < 0.3 < 0.6 < record["dense_alone"]["removed"]["held_out"]
    assert record["choice"]["fusion"] != "rrf" and record["choice"]["alpha"] >= 0.7
    queries = held_back  # the fifth surface form: no word in common with any document
    dense, auto = top(engine, queries, "dense"), top(engine, queries, "hybrid")
    assert np.mean([a[0] == d[0] for a, d in zip(auto, dense)]) >= 0.9
    engine.close()


def test_calibration_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    docs, _, _ = squad()
    engine = collection(tmp_path, Embedder(random=True), docs)
    first = {k: v for k, v in engine.calibrate("c", seed=3).items() if k != "calibrated_at"}
    again = {k: v for k, v in engine.calibrate("c", seed=3).items() if k != "calibrated_at"}
    other = engine.calibrate("c", seed=4)
    assert first == again and first["seed"] == 3
    assert other["scores"] != first["scores"]  # another sample of pseudo-queries
    engine.close()


def test_an_interrupted_calibration_resumes_and_ends_the_same(tmp_path: Path) -> None:
    docs, _, _ = squad()
    whole = collection(tmp_path / "a", Embedder(random=True), docs)
    expect = {k: v for k, v in whole.calibrate("c").items() if k != "calibrated_at"}
    whole.close()
    # the model dies after one batch (two embed calls: its queries and its shortened chunks)
    dying = Embedder(random=True)
    engine = collection(tmp_path / "b", dying, docs)
    dying.fail_after = dying.calls + 2
    with pytest.raises(Unavailable):
        engine.calibrate("c")
    assert (engine.root / "c" / PARTIAL).is_file() and engine.stats("c").calibration is None
    engine.close()
    healthy = Embedder(random=True)
    engine = RetrievalEngine(tmp_path / "b" / "collections", healthy)
    got = {k: v for k, v in engine.calibrate("c").items() if k != "calibrated_at"}
    assert got == expect
    batches = -(-expect["pseudo_queries"] // 32)
    assert healthy.calls == 2 * (batches - 1)  # the first batch came from the partial file
    assert not (engine.root / "c" / PARTIAL).exists()
    assert json.loads((engine.root / "c" / "calibration.json").read_text())["choice"] == expect["choice"]
    engine.close()


def test_too_small_says_so_then_refreshes_as_the_collection_grows(tmp_path: Path) -> None:
    docs, _, _ = squad()
    engine = RetrievalEngine(tmp_path / "collections", Embedder(random=True), calibrate=True)
    engine.create(CollectionConfig(name="c", chunk_tokens=0))
    engine.upsert("c", docs[:10])
    engine.calibrator.wait()
    small = engine.stats("c").calibration
    assert small is not None and small["fallback"] and small["choice"] == FALLBACK
    assert f"too small to calibrate: 10 chunks, at least {MIN_CHUNKS} needed" in small["reason"]
    assert top(engine, ["Normans"], "hybrid")[0]  # auto searches with the fallback
    engine.upsert("c", docs[10:70])
    engine.calibrator.wait()
    first = engine.stats("c").calibration
    assert first is not None and not first["fallback"] and first["chunks"] == 70
    assert first["refresh_at_chunks"] == int(70 * REFRESH_FACTOR)
    engine.upsert("c", docs[70:80])  # 80 < 140: no refresh
    engine.calibrator.wait()
    assert engine.stats("c").calibration["calibrated_at"] == first["calibrated_at"]  # type: ignore[index]
    engine.upsert("c", [Document(f"extra{i}", d.text + f" Copy {i}.") for i, d in enumerate(docs)])
    engine.calibrator.wait()
    assert engine.stats("c").calibration["chunks"] == 160  # type: ignore[index]
    engine.close()
    reopened = RetrievalEngine(tmp_path / "collections", Embedder(random=True))
    assert reopened.stats("c").calibration["chunks"] == 160  # type: ignore[index]  # stored with the collection
    reopened.close()


def one_line_docs(words: int = 0) -> list[Document]:
    """80 one-sentence texts (each paragraph's first sentence after its title, cut at 120 characters;
    `words`: at most that many words) and 20 whole paragraphs."""
    docs, _, _ = squad()
    short = [d.text.split(". ")[1][:120] for d in docs]
    short = [" ".join(t.split()[:words]) if words else t for t in short]
    return [Document(id=f"s{i}", text=t) for i, t in enumerate(short)] + [
        Document(id=f"l{i}", text=d.text) for i, d in enumerate(docs[:20])
    ]


def test_one_line_texts_take_their_dense_weight_from_half_chunk_queries(tmp_path: Path) -> None:
    """Where few chunks have a sentence to spare (one-line texts), the few that do are not used to
    calibrate: half of each chunk is the query, and the weight follows from how well each side alone
    finds its chunk. A useless (random) dense side gets no weight."""
    engine = collection(tmp_path, Embedder(random=True), one_line_docs())
    record = engine.calibrate("c")
    assert not record["fallback"] and record["unit"] == "half" and record["pseudo_queries"] >= 64
    assert record["dense_alone"] < 0.2 < 0.8 < record["sparse_alone"] and record["ratio"] < 0.2
    assert record["choice"] == {"fusion": "weighted", "alpha": 0.0, "adaptive": False}
    assert engine.stats("c").calibration == record
    engine.close()


def test_one_line_texts_with_a_dense_side_as_good_as_the_sparse_one_weight_it(tmp_path: Path) -> None:
    engine = collection(tmp_path, Embedder(), one_line_docs())  # the same words, seen by both sides
    record = engine.calibrate("c")
    assert record["unit"] == "half" and record["ratio"] > 0.8
    assert record["choice"]["fusion"] == "weighted" and record["choice"]["alpha"] >= 0.4
    engine.close()


def test_the_one_line_dense_weight_rises_with_the_ratio_within_its_bounds() -> None:
    assert [short_alpha(r) for r in (0.0, 0.41, 0.5, 0.56, 0.65, 0.75, 0.85, 1.0, math.inf)] == [
        0.0,
        0.0,
        0.0,
        0.1,
        0.2,
        0.3,
        0.4,
        0.6,
        0.6,
    ]


def test_texts_too_short_for_either_unit_take_the_fallback_and_say_why(tmp_path: Path) -> None:
    docs = one_line_docs(words=4)
    engine = collection(tmp_path, Embedder(random=True), docs)
    record = engine.calibrate("c")
    assert record["fallback"] and record["choice"] == FALLBACK
    assert re.search(rf"only \d+ of {len(docs)} chunks examined hold a sentence", record["reason"]), record["reason"]
    assert "words to cut in two halves" in record["reason"] and "50% needed" in record["reason"]
    engine.close()
