"""The `lodestar` CLI as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lodestar.services.client import Client

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent.parent / "fixtures"


def lodestar(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lodestar.services.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_info_json(server) -> None:  # type: ignore[no-untyped-def]
    out = lodestar("--server", server.address, "info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["model"] == "SmolLM2-135M-Instruct" and info["health"] == "SERVING"
    assert "extractive" in info["compress"]["methods"] and info["compress"]["max_passages"] > 0
    human = lodestar("info", "--server", server.address)  # --server also after the command
    assert "dimensions  576" in human.stdout and "compress    extractive" in human.stdout


def test_health_exit_status(server) -> None:  # type: ignore[no-untyped-def]
    ok = lodestar("health", "--server", server.address)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    one = lodestar("health", "--server", server.address, "--service", "lodestar.embed.v1.EmbedService")
    assert one.returncode == 0 and one.stdout.strip() == "SERVING"
    down = lodestar("health", "--server", "127.0.0.1:1")  # nothing listens: the image's HEALTHCHECK fails
    assert down.returncode == 1 and down.stdout.strip() == "UNAVAILABLE"


def test_embed_texts_prints_vectors(server) -> None:  # type: ignore[no-untyped-def]
    out = lodestar("--server", server.address, "embed", "hello there", "general kenobi", "--json", "--mode", "last")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["shape"] == [2, 576] and res["mode"] == "last"


def test_embed_file_to_npy_resumes(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = [f"document number {i} talks about topic {i % 3}" for i in range(10)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "vecs.npy"
    # A previous run finished batch 0 (rows 0-3) and was interrupted: it is kept, not redone.
    parts = tmp_path / "vecs.npy.parts"
    parts.mkdir()
    np.save(parts / "000000.npy", np.zeros((4, 576), dtype=np.float32))
    run = lodestar("--server", server.address, "embed", "--file", str(src), "--out", str(out), "--batch-size", "4")
    assert run.returncode == 0, run.stderr
    table = np.load(out)
    assert table.shape == (10, 576)
    assert not table[:4].any(), "the finished batch was reused"
    with Client(server.address) as c:
        expected = c.embed(texts[4:]).vectors
    # by cosine: the server may batch the file's requests with others, and bf16 rounds with the batch's shape
    cos = (table[4:] * expected).sum(1) / np.linalg.norm(table[4:], axis=1) / np.linalg.norm(expected, axis=1)
    assert (cos > 0.999).all(), cos
    assert not parts.exists()


def test_embed_sparse_on_the_command_line_and_to_a_file(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = ["the cat sat on the mat", "bond yields rose"]
    out = lodestar(
        "--server", server.address, "embed", *texts, "--json", "--mode", "echo", "--sparse", "--sparse-top-k", "12"
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["shape"] == [2, 576] and len(res["sparse"]) == 2
    with Client(server.address) as c:
        want = c.embed(texts, mode="echo", sparse=True, sparse_top_k=12).sparse
    for got, (ids, weights) in zip(res["sparse"], want):
        assert 0 < len(got["ids"]) <= 12 and got["ids"] == ids.tolist() and len(got["tokens"]) == len(got["ids"])
        assert np.allclose(got["weights"], weights, rtol=1e-4) and got["weights"] == sorted(
            got["weights"], reverse=True
        )
    human = lodestar("--server", server.address, "embed", texts[0], "--mode", "echo", "--no-dense")
    assert human.returncode == 0, human.stderr
    assert "terms: " in human.stdout and "[" not in human.stdout
    assert any(f"Ġ{w}:" in human.stdout for w in ("the", "cat", "sat", "on", "mat"))  # tokens, not ids

    src = tmp_path / "docs.txt"
    src.write_text("\n".join(texts * 3) + "\n")
    dest = tmp_path / "vecs.npy"
    run = lodestar(
        "--server",
        server.address,
        "embed",
        "--file",
        str(src),
        "--out",
        str(dest),
        "--mode",
        "echo",
        "--sparse",
        "--batch-size",
        "4",
        "--quiet",
    )
    assert run.returncode == 0, run.stderr
    assert np.load(dest).shape == (6, 576)
    rows = [json.loads(line) for line in (tmp_path / "vecs.sparse.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["ids"] == rows[2]["ids"] and rows[1]["ids"] != rows[0]["ids"]
    only = lodestar(
        "--server",
        server.address,
        "embed",
        "--file",
        str(src),
        "--out",
        str(tmp_path / "s.jsonl"),
        "--mode",
        "echo",
        "--no-dense",
        "--quiet",
    )
    assert only.returncode == 0, only.stderr
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 6 and not (tmp_path / "s.npy").exists()


def test_embed_file_does_not_resume_from_other_options(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """OUT.parts/ remembers what it was made from: a rerun with another mode starts over instead of
    mixing the old vectors in."""
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"text number {i}\n" for i in range(6)))
    out = tmp_path / "vecs.npy"
    parts = tmp_path / "vecs.npy.parts"
    first = lodestar(
        "--server",
        server.address,
        "embed",
        "--file",
        str(src),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--mode",
        "last",
    )
    assert first.returncode == 0, first.stderr
    last = np.load(out)
    parts.mkdir()  # an interrupted run in mean mode: batch 0 done (zeros stand for its vectors)
    (parts / "KEY").write_text("made-from-something-else\n")
    np.save(parts / "000000.npy", np.zeros((4, 576), dtype=np.float32))
    again = lodestar(
        "--server",
        server.address,
        "embed",
        "--file",
        str(src),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--mode",
        "last",
    )
    assert again.returncode == 0, again.stderr
    assert "starting over" in again.stderr
    table = np.load(out)
    assert table[:4].any() and np.allclose(table, last, atol=1e-2)


def test_server_error_exits_nonzero_with_message(server) -> None:  # type: ignore[no-untyped-def]
    run = lodestar("--server", server.address, "embed", "x", "--mode", "nope")
    assert run.returncode == 1
    assert "INVALID_ARGUMENT" in run.stderr and "valid modes are" in run.stderr


def test_eval_sts_prints_one_json_line() -> None:
    run = lodestar("eval", "sts", str(FIXTURES / "stsb_dev_head.tsv"), "--mode", "prompteol", "--quiet")
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["mode"] == "prompteol" and result["pairs"] == 40
    assert 0.3 < result["spearman"] <= 1.0


def test_bench_sparse_writes_json_and_names_bad_sizes(tmp_path: Path) -> None:
    out = tmp_path / "sparse.json"
    run = lodestar("bench", "sparse", "--sizes", "300", "--queries", "5", "--quiet", "--out", str(out))
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["sizes"][0]["documents"] == 300 and result["sizes"][0]["agreement@10"] == 1.0
    bad = lodestar("bench", "sparse", "--sizes", "ten")
    assert bad.returncode != 0 and "--sizes" in bad.stderr


def test_bench_shards_writes_json_and_names_bad_counts(tmp_path: Path) -> None:
    out = tmp_path / "shards.json"
    run = lodestar(
        "bench",
        "shards",
        "--vectors",
        "500",
        "--dim",
        "16",
        "--queries",
        "5",
        "--shards",
        "1,3",
        "--index",
        "Flat",
        "--quiet",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    runs = json.loads(out.read_text())["runs"]
    one = sorted({1, os.cpu_count() or 1})  # one index also runs with FAISS's default threads (every core)
    assert [(r["shards"], r["faiss_threads"]) for r in runs] == [(1, t) for t in one] + [(3, 1)]
    assert all(r["agreement@10"] == 1.0 for r in runs)  # exact either way
    bad = lodestar("bench", "shards", "--shards", "two")
    assert bad.returncode != 0 and "--shards" in bad.stderr


PASSAGE = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
    "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway."
)


def test_compress_prints_context_and_json(server) -> None:  # type: ignore[no-untyped-def]
    args = [
        "--server",
        server.address,
        "compress",
        "Who gave their name to Normandy?",
        "-p",
        PASSAGE,
        "-p",
        "Paris is the capital of France.",
        "--top-n",
        "1",
    ]
    run = lodestar(*args)
    assert run.returncode == 0, run.stderr
    assert "gave their name to Normandy" in run.stdout and "extractive, augment" in run.stdout
    res = json.loads(lodestar(*args, "--json").stdout)
    assert res["decision"] == "augment" and res["spans"][0]["passage"] == 0
    bad = lodestar("--server", server.address, "compress", "q", "-p", "text", "--budget-tokens", "0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "budget_tokens must be > 0" in bad.stderr
    query_side = lodestar(*args, "--json", "--query-mode", "nope")  # the query side's options reach the server
    assert query_side.returncode == 1 and "unknown mode 'nope'" in query_side.stderr + query_side.stdout
    # with --json, errors are JSON on stdout too
    assert json.loads(query_side.stdout)["error"]["code"] == "INVALID_ARGUMENT"


def test_datastore_build_add_upload_and_generate(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def add(a, b):\n    return a + b\n")
    (src / "notes.jsonl").write_text(json.dumps({"text": PASSAGE}) + "\n")
    store = tmp_path / "store"
    built = lodestar("datastore", "build", "--input", str(src), "--out", str(store), "--json", "--quiet")
    assert built.returncode == 0, built.stderr
    info = json.loads(built.stdout)
    assert info["documents"] == 2 and info["segments"] == 1 and not (tmp_path / "store.progress").exists()
    again = lodestar("datastore", "build", "--input", str(src), "--out", str(store))
    assert again.returncode == 2 and "datastore add" in again.stderr
    added = json.loads(
        lodestar("datastore", "add", "--input", str(src / "a.py"), "--out", str(store), "--json", "--quiet").stdout
    )
    assert added["documents"] == 3 and added["segments"] == 2
    up = lodestar(
        "--server",
        server.address,
        "datastore",
        "build",
        "--input",
        str(src),
        "--name",
        "cli_store",
        "--json",
        "--quiet",
    )
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["documents"] == 2
    listed = json.loads(lodestar("--server", server.address, "datastore", "list", "--json").stdout)
    assert "cli_store" in [d["name"] for d in listed]
    gen = lodestar(
        "--server",
        server.address,
        "generate",
        "The Normans were the people who",
        "--datastore",
        "cli_store",
        "--max-new-tokens",
        "12",
        "--json",
    )
    assert gen.returncode == 0, gen.stderr
    res = json.loads(gen.stdout)
    assert res["finish_reason"] == "length" and res["stats"]["generated_tokens"] == 12 and res["text"]
    streamed = lodestar("--server", server.address, "generate", "Hello", "--max-new-tokens", "4")
    assert streamed.returncode == 0 and streamed.stdout.strip() and "4 tokens" in streamed.stderr


def test_answer_streams_with_sources(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = FIXTURES / "compress" / "beir"
    assert (
        lodestar("--server", server.address, "collection", "create", "cli_answer", "--mode", "prompteol").returncode
        == 0
    )
    try:
        assert (
            lodestar(
                "--server", server.address, "index", str(corpus), "-c", "cli_answer", "--wait", "--quiet"
            ).returncode
            == 0
        )
        run = lodestar(
            "--server",
            server.address,
            "answer",
            "Who were the Normans descended from?",
            "-c",
            "cli_answer",
            "-k",
            "2",
            "--max-new-tokens",
            "16",
            "--json",
            "--fusion",
            "rrf",
            "--rrf-k",
            "30",
        )
        assert run.returncode == 0, run.stderr
        res = json.loads(run.stdout)
        assert len(res["sources"]) == 2 and res["decision"] == "augment" and "Norse" in res["context"]
        assert res["text"] and res["finish_reason"] in ("length", "eos")
    finally:
        lodestar("--server", server.address, "collection", "drop", "cli_answer")


def test_eval_specdec_reports_identical_and_speedup(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = tmp_path / "corpus.jsonl"
    src.write_text(json.dumps({"text": PASSAGE}) + "\n")
    assert lodestar("datastore", "build", "--input", str(src), "--out", str(store), "--quiet").returncode == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The Normans were the people who"})
        + "\n"
        + json.dumps({"question": "Where is Normandy?", "passages": [PASSAGE]})
        + "\n"
    )
    run = lodestar(
        "eval", "specdec", "--prompts", str(prompts), "--datastore", str(store), "--max-new-tokens", "12", "--quiet"
    )
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["n"] == 2 and res["identical"] is True and res["speedup"] > 0 and res["mean_accepted_tokens"] >= 1.0


def test_eval_compress_prints_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "compress.json"
    run = lodestar(
        "eval",
        "compress",
        "--qa",
        str(FIXTURES / "compress" / "qa.jsonl"),
        "--corpus",
        str(FIXTURES / "compress" / "beir"),
        "--n",
        "3",
        "--calibration",
        "0",
        "--k",
        "2",
        "--quiet",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["method"] == "extractive" and res["questions"] == 3
    assert 0 < res["compression_rate"] < 1 and {"em", "f1", "answer_in_context"} <= set(res["compressed"])
    assert json.loads(out.read_text())["questions"] == 3


def test_doc_commands_and_search_flags(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Upsert / Get / Delete from the command line, and search's --rrf-k and --no-text."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return lodestar(*args, "-c", "cli_docs", "--server", server.address)

    assert lodestar("--server", server.address, "collection", "create", "cli_docs", "--mode", "mean").returncode == 0
    try:
        src = tmp_path / "docs.jsonl"
        src.write_text(
            json.dumps({"id": "cat", "text": "The cat sat on the mat.", "lang": "en"})
            + "\n\n"
            + json.dumps({"_id": "bond", "title": "Markets", "text": "Bond yields rose again."})
            + "\n"
        )
        up = run("doc", "upsert", str(src), "--json")
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout) == {"documents": 2, "chunks": 2}
        one = run(
            "doc", "upsert", "--id", "dog", "--text", "A dog barked at the mailman.", "--metadata", '{"lang": "de"}'
        )
        assert one.returncode == 0, one.stderr
        got = run("doc", "get", "cat", "dog", "--json")
        assert got.returncode == 0, got.stderr
        rows = json.loads(got.stdout)
        assert rows[0]["metadata"] == {"lang": "en"} and rows[1]["text"] == "A dog barked at the mailman."
        assert rows[1]["metadata"] == {"lang": "de"}
        found = run("search", "feline on a rug", "--retriever", "hybrid", "--rrf-k", "10", "--no-text", "--json")
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)[0]
        assert {h["id"] for h in hits} == {"cat", "bond", "dog"} and all(h["text"] == "" for h in hits)
        assert run("doc", "delete", "cat", "nope", "--json").stdout.strip() == '{"deleted": 1}'
        missing = run("doc", "get", "cat", "bond")
        assert (
            missing.returncode == 3 and "cat: not found" in missing.stdout and "Markets. Bond yields" in missing.stdout
        )
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"id": "x", "text": "ok"}) + "\n{nope\n")
        refused = run("doc", "upsert", str(bad))
        assert refused.returncode == 2 and "line 2: not valid JSON" in refused.stderr
        assert (
            json.loads(lodestar("--server", server.address, "collection", "stats", "cli_docs", "--json").stdout)[
                "documents"
            ]
            == 2
        )
    finally:
        lodestar("--server", server.address, "collection", "drop", "cli_docs")


def test_index_job_then_jobs_commands(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"j{i}", "text": f"job document {i}"}) + "\n" for i in range(5)) + "not json\n"
    )
    assert lodestar("--server", server.address, "collection", "create", "cli_jobs", "--mode", "mean").returncode == 0
    try:
        sub = lodestar("--server", server.address, "index", str(src), "-c", "cli_jobs", "--json", "--quiet")
        assert sub.returncode == 0, sub.stderr
        job_id = json.loads(sub.stdout)["id"]
        watched = lodestar("--server", server.address, "jobs", "watch", job_id, "--json", "--quiet")
        assert watched.returncode == 0, watched.stderr
        job = json.loads(watched.stdout)
        assert job["state"] == "done" and job["written"] == 5 and job["errors"][0]["line"] == 6
        listed = lodestar("--server", server.address, "jobs")
        assert job_id in listed.stdout and "done" in listed.stdout
        shown = lodestar("--server", server.address, "jobs", "show", job_id)
        assert "line 6: not valid JSON" in shown.stdout
        missing = lodestar("--server", server.address, "jobs", "show", "nope")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    finally:
        lodestar("--server", server.address, "collection", "drop", "cli_jobs")


def test_train_commands_with_config_and_resume(tiny_backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(model)
    tiny_backbone.tokenizer.save_pretrained(model)
    sts = FIXTURES / "stsb_dev_head.tsv"
    config = tmp_path / "bidi.json"
    config.write_text(
        json.dumps(
            {
                "mntp_steps": 2,
                "simcse_steps": 2,
                "supervised_steps": 2,
                "eval_every": 1,
                "lora_r": 2,
                "lora_alpha": 4,
                "max_tokens": 24,
            }
        )
    )
    out = tmp_path / "bidi"
    args = [
        "train",
        "bidirectional",
        "--model",
        str(model),
        "--corpus",
        str(sts),
        "--pairs",
        str(sts),
        "--out",
        str(out),
        "--config",
        str(config),
        "--simcse-steps",
        "3",
        "--quiet",
    ]
    run = lodestar(*args)
    assert run.returncode == 0, run.stderr
    card = json.loads(run.stdout)
    assert [s["steps"] for s in card["stages"]] == [2, 3, 2]  # the flag beat the config file
    assert "train bidirectional" in card["command"] and (out / "adapter" / "adapter_config.json").is_file()
    again = lodestar(*args)
    assert again.returncode == 0 and json.loads(again.stdout)["stages"] == card["stages"]  # all stages done: reused
    triplets = tmp_path / "t.jsonl"
    triplets.write_text(
        "".join(
            json.dumps(
                {"query": f"q{i} about music", "positive": f"doc {i} on music", "negatives": [f"doc {i} on finance"]}
            )
            + "\n"
            for i in range(8)
        )
    )
    sparse = lodestar(
        "train",
        "sparse",
        "--model",
        str(model),
        "--triplets",
        str(triplets),
        "--out",
        str(tmp_path / "sparse"),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--lora-r",
        "2",
        "--quiet",
    )
    assert sparse.returncode == 0, sparse.stderr
    assert json.loads(sparse.stdout)["stages"][0]["stage"] == "sparse"
    bad = lodestar("train", "sparse", "--model", str(model), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--triplets" in bad.stderr
