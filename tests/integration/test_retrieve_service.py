"""RetrieveService over real gRPC: collections, upsert/delete/get, filters, hybrid, bad input,
crash safety of a `lodestar serve` process under SIGKILL, and corrupt-snapshot detection."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lodestar.backbone import Backbone
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.services.client import Client, ClientError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

pytestmark = pytest.mark.slow

CORPUS = [
    {
        "id": "guitar",
        "text": "A man plays an acoustic guitar on a small stage.",
        "metadata": {"topic": "music", "year": 2001},
    },
    {
        "id": "piano",
        "text": "The pianist performed a Chopin nocturne at the concert hall.",
        "metadata": {"topic": "music", "year": 2015},
    },
    {
        "id": "stocks",
        "text": "Stock markets fell sharply after the central bank raised rates.",
        "metadata": {"topic": "finance", "year": 2015},
    },
    {
        "id": "bonds",
        "text": "Government bond yields climbed to their highest level in a decade.",
        "metadata": {"topic": "finance", "year": 2020},
    },
    {
        "id": "soccer",
        "text": "The football team won the championship after a penalty shootout.",
        "metadata": {"topic": "sport", "year": 2020},
    },
]


@pytest.fixture
def collection(client: Client, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    name = "t_" + re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:50]
    client.create_collection(name, mode="prompteol", sparse="bm25", chunk_tokens=64, chunk_overlap=8)
    client.upsert(name, CORPUS)
    yield name
    client.drop_collection(name)


def test_dense_sparse_hybrid_search(client: Client, collection: str) -> None:
    dense = client.search(collection, "someone playing music on a guitar", k=3)[0]
    assert dense[0].id == "guitar" and len(dense) == 3
    sparse = client.search(collection, "bond yields", retriever="sparse", k=2)[0]
    assert sparse[0].id == "bonds"
    for fusion in ("rrf", "weighted"):
        hybrid = client.search(
            collection, "central bank rates and stock markets", retriever="hybrid", fusion=fusion, k=3
        )[0]
        assert hybrid[0].id == "stocks"
        assert hybrid[0].dense_score is not None and hybrid[0].sparse_score is not None


def test_auto_fusion_is_calibrated_in_the_background_and_shown_in_stats(client: Client) -> None:
    """The real model: 64 SQuAD paragraphs reach the calibration mark; the server chooses the fusion
    from pseudo-queries in the background and Stats carries the choice and its evidence."""
    corpus = [json.loads(line) for line in (FIXTURES / "squad_beir" / "corpus.jsonl").read_text().splitlines()][:64]
    client.create_collection("calibrated", mode="mean", chunk_tokens=0)
    try:
        client.upsert("calibrated", [{"id": d["_id"], "text": f"{d['title']}. {d['text']}"} for d in corpus])
        deadline = time.monotonic() + 300
        while (client.stats("calibrated").calibration or {}).get("fallback", True) and time.monotonic() < deadline:
            time.sleep(0.5)
        record = client.stats("calibrated").calibration
        assert record is not None and not record["fallback"] and record["chunks"] == 64, record
        assert record["choice"]["fusion"] in ("weighted", "dbsf", "rrf") and record["pseudo_queries"] >= 16
        assert {"removed", "kept", "worst_lower_bound"} <= set(record["chosen"]) and record["refresh_at_chunks"] == 128
        again = client.calibrate("calibrated", seed=0).calibration  # the same seed: the same choice
        assert again is not None and again["choice"] == record["choice"] and again["scores"] == record["scores"]
        for fusion in ("", "auto", "dbsf"):
            hits = client.search("calibrated", "Who led the Norse raiders?", retriever="hybrid", fusion=fusion, k=3)[0]
            assert hits[0].id.startswith("0_")  # a Normans paragraph
    finally:
        client.drop_collection("calibrated")


def test_sparse_only_collection_over_grpc(client: Client) -> None:
    stats = client.create_collection("lexical", dense="none")
    assert stats.dense == "none" and stats.config is not None and stats.config.dense == "none"
    try:
        client.upsert("lexical", CORPUS)
        assert client.search("lexical", "bond yields", retriever="sparse", k=1)[0][0].id == "bonds"
        with pytest.raises(ClientError) as e:
            client.search("lexical", "bond yields", k=1)
        assert e.value.code == "INVALID_ARGUMENT" and "dense='none'" in str(e.value)
        assert client.stats("lexical").index_vectors == 0 and client.stats("lexical").calibration is None
    finally:
        client.drop_collection("lexical")


def test_batch_search_and_hit_fields(client: Client, collection: str) -> None:
    results = client.search(collection, ["penalty shootout football", "Chopin piano concert"], k=1)
    assert [r[0].id for r in results] == ["soccer", "piano"]
    hit = results[0][0]
    assert hit.metadata == {"topic": "sport", "year": 2020} and hit.chunk == 0 and "football" in hit.chunk_text


def test_filters_apply_before_ranking(client: Client, collection: str) -> None:
    # The only finance document from 2020 is ranked low for a music query, yet k=1 returns it.
    hits = client.search(collection, "guitar music", k=1, filters=[("topic", "eq", "finance"), ("year", "gte", 2016)])[
        0
    ]
    assert [h.id for h in hits] == ["bonds"]
    hits = client.search(
        collection, "guitar music", k=5, retriever="hybrid", filters=[("topic", "in", ["sport", "finance"])]
    )[0]
    assert {h.id for h in hits} == {"stocks", "bonds", "soccer"}


def test_upsert_replaces_and_delete_removes(client: Client, collection: str) -> None:
    client.upsert(
        collection,
        [{"id": "guitar", "text": "A recipe for lemon cake with butter and sugar.", "metadata": {"topic": "food"}}],
    )
    (doc,) = client.get(collection, ["guitar"])
    assert doc is not None and "lemon" in doc.text and doc.metadata == {"topic": "food"}
    hits = client.search(collection, "baking a cake", k=1)[0]
    assert hits[0].id == "guitar"
    assert client.delete(collection, ["guitar", "no-such-id"]) == 1
    assert client.get(collection, ["guitar", "piano"])[0] is None
    for retriever in ("dense", "sparse", "hybrid"):
        ids = {h.id for h in client.search(collection, "lemon cake guitar", k=10, retriever=retriever)[0]}
        assert "guitar" not in ids
    stats = client.stats(collection)
    assert stats.documents == 4 and stats.chunks >= 4 and stats.bytes > 0 and stats.index == "Flat"


def _raw_search(client: Client, collection: str, **fields: object) -> object:
    """A SearchRequest as the first release's clients (or a client with newer enums) send it."""
    from lodestar.services.client.calls import Unary

    req = rpb.SearchRequest(collection=collection, queries=["x"], **fields)  # type: ignore[arg-type]
    return client._run(Unary(("retrieve", "Search"), req, lambda r: r, 60))


@pytest.mark.parametrize(
    "call, code, needle",
    [
        (lambda c, n: c.search("no_such_collection", "x"), "NOT_FOUND", "no_such_collection"),
        (lambda c, n: c.create_collection(n), "ALREADY_EXISTS", "exists"),
        (lambda c, n: c.search(n, "x", k=0), "INVALID_ARGUMENT", "k"),
        (lambda c, n: c.search(n, "x", k=100000), "INVALID_ARGUMENT", "k"),
        (
            lambda c, n: c.search(n, "x", retriever="magic"),
            "ValueError",
            "dense, sparse, hybrid",
        ),  # refused by the client
        (lambda c, n: _raw_search(c, n, retriever="magic"), "INVALID_ARGUMENT", "dense"),  # ...and by the server
        (
            lambda c, n: c.search(n, "x", retriever="sparse", feedback_chunks=3),
            "INVALID_ARGUMENT",
            "learned sparse side",
        ),
        (lambda c, n: c.search(n, "x", retriever="sparse", feedback_chunks=500), "INVALID_ARGUMENT", "0..100"),
        (
            lambda c, n: c.search(n, "x", retriever="sparse", length_norm=2.0),
            "INVALID_ARGUMENT",
            "length_norm=2.0 is out of range: use 0..1",
        ),
        (lambda c, n: c.search(n, "x", retriever="sparse", length_norm=0.5), "INVALID_ARGUMENT", "learned sparse side"),
        (lambda c, n: c.search(n, "x", filters=[("year", "between", 3)]), "ValueError", "gte"),
        (
            lambda c, n: _raw_search(c, n, filters=[rpb.Filter(field="year", op="between", value_json="3")]),
            "INVALID_ARGUMENT",
            "gte",
        ),
        (
            lambda c, n: _raw_search(c, n, options=rpb.SearchOptions(fusion=7)),
            "INVALID_ARGUMENT",
            "fusion: unknown value 7",
        ),
        (lambda c, n: c.upsert(n, [{"id": "x" * 600, "text": "long id"}]), "INVALID_ARGUMENT", "512"),
        (lambda c, n: c.upsert(n, [{"id": "", "text": "no id"}]), "INVALID_ARGUMENT", "id"),
        (lambda c, n: c.create_collection("bad_index", index="NotAnIndex"), "INVALID_ARGUMENT", "HNSW32"),
        (lambda c, n: c.create_collection("bad_mode", mode="nope"), "INVALID_ARGUMENT", "prompteol"),
        (lambda c, n: c.create_collection("bad_shards", shards=100), "INVALID_ARGUMENT", "1..64"),
    ],
)
def test_bad_input(client: Client, collection: str, call, code: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    if code == "ValueError":
        with pytest.raises(ValueError, match=needle):
            call(client, collection)
    else:
        with pytest.raises(ClientError) as err:
            call(client, collection)
        assert err.value.code == code
        assert needle in err.value.message
    assert client.search(collection, "guitar", k=1)[0][0].id == "guitar", "still serving, nothing lost"


def test_metadata_must_be_a_json_object_and_rejected_batch_changes_nothing(client: Client, collection: str) -> None:
    from lodestar.retrieve.v1 import retrieve_pb2 as rpb

    bad = rpb.UpsertRequest(
        collection=collection,
        documents=[
            rpb.Document(id="new1", text="fine document"),
            rpb.Document(id="new2", text="bad metadata", metadata_json="[1, 2]"),
        ],
    )
    with pytest.raises(Exception) as err:
        client._stubs["retrieve"].Upsert(bad)
    assert "must be a JSON object" in str(err.value)
    with pytest.raises(ClientError):
        client.upsert(collection, [{"id": "new3", "text": "good"}, {"id": "new3", "text": "duplicate id in batch"}])
    assert client.get(collection, ["new1", "new3"]) == [None, None]
    assert client.stats(collection).documents == len(CORPUS)


def test_collection_cli(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d["id"], "title": "", "text": d["text"]}) + "\n" for d in CORPUS))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lodestar.services.cli", "--server", server.address, *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    assert (
        run(
            "collection",
            "create",
            "cli_col",
            "--mode",
            "mean",
            "--index",
            "HNSW32",
            "--sparse",
            "bm25",
            "--no-query-idf",
            "--shards",
            "2",
        ).returncode
        == 0
    )
    out = run("index", str(corpus), "--collection", "cli_col", "--json", "--wait", "--chunk-docs", "2")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["state"] == "done" and job["documents"] == 5 and job["written"] == 5 and job["chunks"] == 3
    stats = json.loads(run("collection", "stats", "cli_col", "--json").stdout)
    assert stats["documents"] == 5 and stats["index"] == "HNSW32" and {"chunks", "bytes"} <= set(stats)
    assert stats["config"]["mode"] == "mean" and stats["config"]["query_idf"] is False  # the config it was made with
    assert stats["config"]["shards"] == 2 and stats["index_vectors"] == stats["chunks"] == 5  # over two HNSW shards
    hits = json.loads(
        run("search", "bond yields", "-c", "cli_col", "--retriever", "hybrid", "-k", "2", "--json").stdout
    )
    assert hits[0][0]["id"] == "bonds"
    listed = run("collection", "list", "--json")
    assert "cli_col" in {c["name"] for c in json.loads(listed.stdout)}
    missing = run("collection", "stats", "nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    small = run("calibrate", "cli_col", "--json")  # 5 chunks: the stated fallback
    assert small.returncode == 0 and json.loads(small.stdout)["fallback"] is True, small.stderr
    assert run("collection", "drop", "cli_col").returncode == 0
    assert run("collection", "create", "cli_lex", "--dense", "none").returncode == 0
    lex = run("calibrate", "cli_lex")
    assert lex.returncode == 1 and "INVALID_ARGUMENT" in lex.stderr and "both sides" in lex.stderr
    assert json.loads(run("collection", "stats", "cli_lex", "--json").stdout)["dense"] == "none"
    assert run("collection", "drop", "cli_lex").returncode == 0


# --- crash safety ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(folder: Path, data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LODESTAR_MODEL": str(folder), "LODESTAR_DTYPE": "float32", "LODESTAR_DATA_DIR": str(data)}
    return subprocess.Popen(
        [sys.executable, "-m", "lodestar.services.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def tiny_folder(tmp_path: Path, tiny_backbone: Backbone) -> Path:
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    return folder


def test_sigkill_mid_upserts_loses_no_acknowledged_document(tmp_path: Path, tiny_folder: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    proc = _start(tiny_folder, data, port)
    acked: dict[str, str] = {}
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            c.wait_ready(120)
            c.create_collection("crash", index="HNSW32", sparse="bm25")
            stop = threading.Event()

            def writer() -> None:
                i = 0
                while not stop.is_set():
                    batch = [
                        {"id": f"d{i}-{j}", "text": f"document {i} part {j} about topic {j % 7}"} for j in range(20)
                    ]
                    try:
                        c.upsert("crash", batch)
                    except ClientError:
                        return
                    acked.update({d["id"]: d["text"] for d in batch})
                    i += 1

            t = threading.Thread(target=writer)
            t.start()
            while len(acked) < 200:
                t.join(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            stop.set()
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = _start(tiny_folder, data, port)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            c.wait_ready(120)
            ids = sorted(acked)
            docs = c.get("crash", ids)
            assert all(d is not None and d.text == acked[d.id] for d in docs), "an acknowledged document was lost"
            stats = c.stats("crash")
            assert stats.status == "ok"
            assert stats.documents >= len(acked) and stats.documents % 20 == 0, "a half-written batch"
            hits = c.search("crash", "document 3 part 5 about topic 5", k=stats.documents, retriever="sparse")[0]
            assert len({h.id for h in hits}) == len(hits)
            dense = c.search("crash", "document 1 part 2", k=50)[0]
            assert len(dense) == 50 and all(h.id in acked or h.id.startswith("d") for h in dense)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_flipped_byte_in_snapshot_is_detected(tmp_path: Path, tiny_folder: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    proc = _start(tiny_folder, data, port)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            c.wait_ready(120)
            for name in ("good", "victim"):
                c.create_collection(name)
                c.upsert(name, CORPUS)
                manifest = c.snapshot(name)
                assert manifest["files"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    files = [
        p
        for p in (data / "collections" / "victim").rglob("*")
        if p.is_file() and p.parent.name == "snapshot" and p.name != "manifest.json"
    ]
    target = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    proc = _start(tiny_folder, data, port)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            c.wait_ready(120)
            assert c.health("lodestar.retrieve.v1.RetrieveService/victim") == "NOT_SERVING"
            assert c.health("lodestar.retrieve.v1.RetrieveService/good") == "SERVING"
            with pytest.raises(ClientError) as err:
                c.search("victim", "guitar")
            assert err.value.code == "UNAVAILABLE" and "rebuild" in err.value.message
            assert c.search("good", "guitar", k=1, retriever="sparse")[0][0].id == "guitar"
            c.rebuild("victim")
            assert c.health("lodestar.retrieve.v1.RetrieveService/victim") == "SERVING"
            assert len(c.search("victim", "guitar", k=5)[0]) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
