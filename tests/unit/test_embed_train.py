"""Embedding adapter training, tiny smoke runs on a tiny real model: every stage's loss goes down,
the adapter saves, loads in the serving engine and changes its embeddings, and reruns resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodel import FIXTURES, build_tiny  # noqa: E402  (tests/ is on sys.path)

from lodestar.backbone.train.loop import adapter_folder
from lodestar.embed.engine import EmbeddingEngine
from lodestar.embed.train.bidirectional import BidirectionalConfig, mask_token_id, train_bidirectional
from lodestar.embed.train.common import LoraSettings, RunSettings
from lodestar.embed.train.data import read_pairs, read_sentences, split
from lodestar.embed.train.encoder import TrainEncoder
from lodestar.embed.train.losses import cosent, flops, info_nce
from lodestar.embed.types import EmbedOptions
from lodestar.errors import InvalidInput, NotFound

STS = FIXTURES / "stsb_dev_head.tsv"
CORPUS = FIXTURES / "compress" / "beir"
TEXTS = ["A man is playing a guitar.", "The stock market fell sharply."]


def test_losses() -> None:
    q = torch.eye(3)
    assert info_nce(q, q, 0.05)[1] == 1.0 and info_nce(q, q.flip(0), 0.05)[1] < 1.0
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    good = cosent(a, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([5.0, 0.0]))
    bad = cosent(a, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([5.0, 0.0]))
    assert good < bad
    assert flops(torch.tensor([[1.0, 0.0], [1.0, 0.0]])) > flops(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) * 0.99


def test_data_readers() -> None:
    sents = read_sentences([CORPUS, STS], seed=1)
    assert len(sents) > 50 and all(4 <= len(s.split()) <= 64 for s in sents)
    pairs = read_pairs(STS)
    train, dev = split(pairs, 0.25, 0)
    assert len(train) + len(dev) == len(pairs) == 40 and not set(map(id, train)) & set(map(id, dev))
    with pytest.raises(InvalidInput):
        split(pairs, 1.5, 0)


def test_bidirectional_stages_train_save_serve_and_resume(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bidi"
    run = RunSettings(
        out_dir=out,
        eval_every=2,
        patience=100,
        progress=False,
        data_licence="CC BY-SA 4.0",
        lora=LoraSettings(r=4, alpha=8),
    )
    cfg = BidirectionalConfig(
        run=run,
        corpus=(CORPUS,),
        pairs=STS,
        dev_fraction=0.25,
        mntp_steps=4,
        mntp_batch=4,
        mntp_lr=5e-3,
        simcse_steps=4,
        simcse_batch=4,
        simcse_lr=5e-3,
        supervised_steps=4,
        supervised_batch=8,
        supervised_lr=5e-3,
        max_tokens=32,
    )
    card = train_bidirectional(build_tiny(tokenizer), cfg, command="lodestar train bidirectional ...")
    assert [s["stage"] for s in card["stages"]] == ["mntp", "simcse", "supervised"]
    mntp = card["stages"][0]
    assert mntp["steps"] == 4 and mntp["train_loss_last"] < mntp["train_loss_first"]
    assert card["data_licence"] == "CC BY-SA 4.0" and (out / "adapter" / "adapter_config.json").is_file()
    assert "lodestar train bidirectional" in (out / "README.md").read_text()

    engine = EmbeddingEngine(build_tiny(tokenizer))
    try:
        base = engine.embed(TEXTS, EmbedOptions(mode="bidirectional")).vectors
        tuned = engine.embed(
            TEXTS, EmbedOptions(mode="bidirectional", adapter=str(out / "supervised" / "checkpoint" / "adapter"))
        ).vectors
        assert not np.allclose(base, tuned, atol=1e-4)
    finally:
        engine.close()

    again = train_bidirectional(build_tiny(tokenizer), cfg)  # every stage is done: nothing retrains
    assert [s["steps"] for s in again["stages"]] == [s["steps"] for s in card["stages"]]
    assert json.loads((out / "card.json").read_text())["kind"] == "bidirectional"

    # more steps for a finished stage: it continues from its checkpoint, and the later stages redo
    simcse_done = (out / "simcse" / "done.json").stat().st_mtime_ns
    more = train_bidirectional(build_tiny(tokenizer), BidirectionalConfig(**{**cfg.__dict__, "mntp_steps": 6}))
    mntp, simcse, supervised = more["stages"]
    assert mntp["steps"] == 6 and mntp["resumed_from_step"] == 4
    assert simcse["steps"] == 4 and simcse["resumed_from_step"] == 0 and supervised["resumed_from_step"] == 0
    assert (out / "simcse" / "done.json").stat().st_mtime_ns != simcse_done


def test_bidirectional_refuses_missing_data(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = RunSettings(out_dir=tmp_path / "x", progress=False)
    with pytest.raises(InvalidInput, match="nothing to train"):
        train_bidirectional(build_tiny(tokenizer), BidirectionalConfig(run=run))
    with pytest.raises(InvalidInput, match="need --corpus"):
        train_bidirectional(build_tiny(tokenizer), BidirectionalConfig(run=run, pairs=STS, stages=("mntp",)))
    assert mask_token_id(tokenizer) >= 0
    missing = tmp_path / "no-such-adapter"
    with pytest.raises(NotFound, match="no peft adapter at .*no-such-adapter"):
        train_bidirectional(
            build_tiny(tokenizer), BidirectionalConfig(run=run, pairs=STS, stages=("supervised",), init_adapter=missing)
        )


def test_init_adapter_accepts_the_adapter_or_its_run_folder(tmp_path: Path) -> None:
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    assert (
        adapter_folder(tmp_path / "run") == adapter_folder(tmp_path / "run" / "adapter") == tmp_path / "run" / "adapter"
    )


def test_splade_weights_are_standardised_logits_above_the_shift() -> None:
    from lodestar.embed.forward import splade_weights
    from lodestar.embed.types import SPARSE_SHIFT

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1000, generator=g) + 8.0  # a decoder's logits: positive almost everywhere
    logits[0, 7] = logits[3, 9] = 40.0  # two tokens the positions predict with confidence
    w = splade_weights(logits)
    assert set(torch.nonzero(w).flatten().tolist()) == {7, 9}  # not the ~all of raw log1p(relu(logits))
    assert torch.allclose(splade_weights(logits * 3.0 - 11.0), w, atol=1e-5)  # softmax-invariant shifts and scales
    z = (logits[0] - logits[0].mean()) / logits[0].std()
    assert torch.isclose(w[7], torch.log1p(z[7] - SPARSE_SHIFT))


def test_sparse_output_matches_the_trainer_and_respects_top_k(tiny_engine, tokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = ["A man is playing a guitar.", "Stocks fell.", "The quick brown fox jumps over the lazy dog."]
    res = tiny_engine.embed(texts, EmbedOptions(mode="echo", sparse=True, sparse_top_k=16))
    dense_only = tiny_engine.embed(texts, EmbedOptions(mode="echo")).vectors
    assert np.allclose(res.vectors, dense_only, atol=1e-5)  # one forward gives both
    assert res.sparse is not None and len(res.sparse) == 3
    enc = TrainEncoder(tiny_engine.backbone.model, tokenizer, "echo")
    with torch.no_grad():
        full = enc.sparse(texts).numpy()  # (B, V)
    for (ids, w), row in zip(res.sparse, full):
        assert 0 < len(ids) <= 16 and np.all(np.diff(w) <= 1e-6)  # by decreasing weight
        assert np.allclose(row[ids], w, atol=1e-4)
        assert np.isclose(w[0], row.max(), atol=1e-4)
    cut = tiny_engine.embed(
        texts[:1], EmbedOptions(mode="echo", sparse=True, sparse_threshold=float(res.sparse[0][1][3]))
    )
    assert len(cut.sparse[0][0]) == 3  # strictly above the 4th weight
    alone = tiny_engine.embed(texts[1:2], EmbedOptions(mode="echo", sparse=True, sparse_top_k=16)).sparse[0]
    assert list(alone[0]) == list(res.sparse[1][0])  # independent of the batch
    with pytest.raises(InvalidInput, match="top_k must be in 0..1024"):
        tiny_engine.embed(texts, EmbedOptions(mode="echo", sparse=True, sparse_top_k=5000))


def triplets_file(tmp_path: Path) -> Path:
    rows = [
        {"query": q, "positive": p, "negatives": [n]}
        for q, p, n in [
            ("who plays guitar", "A man plays an acoustic guitar on stage.", "Bond yields climbed."),
            ("bond yields", "Government bond yields climbed to a decade high.", "The team won a penalty shootout."),
            ("football final", "The football team won the championship.", "A man plays the guitar."),
            ("central bank", "The central bank raised interest rates again.", "A cat sleeps on the sofa."),
            ("cat sofa", "A cat sleeps on the sofa all afternoon.", "Rates went up."),
            ("piano concert", "The pianist performed Chopin at the concert hall.", "Stocks fell sharply."),
            ("stock market", "Stocks fell sharply after the announcement.", "The pianist bowed."),
            ("rainy weather", "It rained all day in the city.", "The orchestra tuned up."),
        ]
    ]
    path = tmp_path / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sparse_training_lowers_the_loss_and_serves(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lodestar.embed.train.sparse import SparseConfig, train_sparse

    out = tmp_path / "sparse"
    run = RunSettings(out_dir=out, eval_every=3, patience=100, progress=False, lora=LoraSettings(r=4, alpha=8))
    cfg = SparseConfig(
        run=run,
        triplets=triplets_file(tmp_path),
        steps=6,
        batch=4,
        lr=5e-3,
        flops_warmup=2,
        dev_fraction=0.25,
        max_tokens=32,
    )
    card = train_sparse(build_tiny(tokenizer), cfg)
    stage = card["stages"][0]
    assert stage["stage"] == "sparse" and stage["steps"] == 6 and stage["train_loss_last"] < stage["train_loss_first"]
    assert stage["dev"]["dev_d_nnz"] > 0  # sparsity is reported
    engine = EmbeddingEngine(build_tiny(tokenizer))
    try:
        opts = dict(mode="echo", sparse=True, sparse_top_k=8)
        base = engine.embed(TEXTS, EmbedOptions(**opts)).sparse
        tuned = engine.embed(TEXTS, EmbedOptions(**opts, adapter=str(out / "sparse" / "checkpoint" / "adapter"))).sparse
        assert any(not np.allclose(a[1], b[1]) for a, b in zip(base, tuned))
    finally:
        engine.close()


def test_adapt_resumes_synthetic_queries_and_trains_both(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lodestar.embed.train.adapt import AdaptConfig, adapt, clip, read_corpus

    corpus = tmp_path / "corpus.jsonl"
    sentences = read_sentences([STS], seed=0)[:24]
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": s}) + "\n" for i, s in enumerate(sentences)))
    out = tmp_path / "adapt"
    out.mkdir()
    # A previous run wrote 20 of the 24 queries (the tiny random model cannot write questions itself).
    docs = read_corpus(corpus)
    (out / "synthetic.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": i, "passage": clip(tokenizer, t, 32), "query": f"what about the {' and '.join(t.split()[1:4])}?"}
            )
            + "\n"
            for i, t in docs[:20]
        )
    )
    run = RunSettings(out_dir=out, eval_every=2, patience=100, progress=False, lora=LoraSettings(r=4, alpha=8))
    cfg = AdaptConfig(
        run=run, corpus=corpus, passages=24, question_tokens=8, steps=2, batch=2, lr=5e-3, max_passage_tokens=32
    )
    card = adapt(lambda: build_tiny(tokenizer), cfg, command="lodestar adapt ...")
    assert card["triplets"] >= 20 and len((out / "synthetic.jsonl").read_text().splitlines()) == 24  # 4 new
    triplets = [json.loads(line) for line in (out / "triplets.jsonl").read_text().splitlines()]
    with_negative = [t for t in triplets if t["negatives"]]
    assert with_negative and all(t["negatives"][0] != t["positive"] for t in with_negative)  # BM25 hard negatives
    for kind in ("dense", "sparse"):
        assert (out / kind / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "card.json").read_text())["kinds"] == ["dense", "sparse"]


@pytest.mark.slow
def test_synthetic_queries_from_the_real_model(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lodestar.embed.train.adapt import AdaptConfig, synthetic_queries

    docs = [
        (f"d{i}", t)
        for i, t in enumerate(
            [
                "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
                "Computational complexity theory classifies computational problems according to their inherent difficulty.",
                "The Huguenots were French Protestants who followed the teachings of John Calvin.",
            ]
        )
    ]
    cfg = AdaptConfig(
        run=RunSettings(out_dir=tmp_path, progress=False), corpus=tmp_path, passages=3, question_tokens=32
    )
    rows = synthetic_queries(backbone, docs, cfg, tmp_path / "synthetic.jsonl")
    assert len(rows) >= 2 and all(len(r["query"].split()) >= 3 for r in rows)

    def content(text: str) -> set[str]:
        return {w.strip(".,?").lower() for w in text.split() if len(w.strip(".,?")) > 4}

    # topical, not "What is the answer to this question?" (what the zero-shot prompt got)
    assert sum(bool(content(r["query"]) & content(r["passage"])) for r in rows) >= 2, rows


def test_grounded_drops_copies_of_the_worked_examples() -> None:
    from lodestar.embed.train.adapt import QUERY_SHOTS, grounded

    passage = "The Thesaurus and some Methods of its Construction. A thesaurus groups index terms by meaning."
    assert grounded("how is a thesaurus of index terms constructed", passage)
    assert not grounded(QUERY_SHOTS[1][1], passage)  # the example's query, verbatim
    assert not grounded("how does thesaurus age faster when hot", passage)  # its template, filled in
    assert not grounded("what is the purpose of this search query?", passage)  # about nothing in it


def test_clean_question_drops_degenerate_generations() -> None:
    from lodestar.embed.train.adapt import clean_question

    assert clean_question(' "how does drought affect wheat yields" ') == "how does drought affect wheat yields"
    assert clean_question("how does bias bias bias bias bias bias bias bias") is None
    assert clean_question("why?") is None


def test_title_queries_use_titles_and_strip_them_from_every_passage(tmp_path: Path) -> None:
    from lodestar.embed.train.adapt import AdaptConfig, title_queries

    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {
            "_id": "1",
            "title": "wing in a slipstream .",
            "text": "wing in a slipstream . lift rises behind the propeller at every angle",
        },
        {
            "_id": "2",
            "title": "shear flow past a plate",
            "text": "the boundary layer grows along the flat plate downstream",
        },
        {"_id": "3", "title": "", "text": "an untitled note about heat transfer in nozzles and ducts"},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = AdaptConfig(run=RunSettings(out_dir=tmp_path, progress=False), corpus=corpus, queries="title", passages=10)
    picked, docs = title_queries(corpus, cfg)
    assert {r["id"]: r["query"] for r in picked} == {"1": "wing in a slipstream", "2": "shear flow past a plate"}
    assert dict(docs) == {
        "1": "lift rises behind the propeller at every angle",
        "2": "the boundary layer grows along the flat plate downstream",
        "3": rows[2]["text"],
    }  # negatives come from these: none carries its title
    assert all(r["passage"] == dict(docs)[r["id"]] for r in picked)
    untitled = tmp_path / "untitled.jsonl"
    untitled.write_text(json.dumps({"_id": "1", "text": "no title here at all, only text"}) + "\n")
    with pytest.raises(InvalidInput, match="--queries generate"):
        title_queries(untitled, cfg)


def test_adapt_with_title_queries_trains_without_generating(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lodestar.embed.train.adapt import AdaptConfig, adapt

    corpus = tmp_path / "corpus.jsonl"
    sentences = read_sentences([STS], seed=0)[:24]
    corpus.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": " ".join(s.split()[:4]), "text": f"{s} {sentences[i - 1]}"}) + "\n"
            for i, s in enumerate(sentences)
        )
    )
    run = RunSettings(
        out_dir=tmp_path / "adapt", eval_every=2, patience=100, progress=False, lora=LoraSettings(r=4, alpha=8)
    )
    cfg = AdaptConfig(
        run=run,
        corpus=corpus,
        kinds=("sparse",),
        queries="title",
        passages=24,
        steps=2,
        batch=2,
        lr=5e-3,
        max_passage_tokens=32,
    )
    with pytest.raises(InvalidInput, match="valid are generate, title"):
        adapt(lambda: build_tiny(tokenizer), AdaptConfig(run=run, corpus=corpus, queries="headings"))
    card = adapt(lambda: build_tiny(tokenizer), cfg, command="lodestar adapt --queries title ...")
    assert card["queries"] == "title" and card["triplets"] >= 8
    assert not (tmp_path / "adapt" / "synthetic.jsonl").exists()  # nothing generated
    triplets = [json.loads(line) for line in (tmp_path / "adapt" / "triplets.jsonl").read_text().splitlines()]
    assert all(not t["positive"].startswith(t["query"]) for t in triplets)
    assert (tmp_path / "adapt" / "sparse" / "adapter" / "adapter_config.json").is_file()
