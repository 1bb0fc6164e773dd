"""Stateless query replicas: two `lodestar serve` processes (the tiny model) pointed at one Milvus
(Milvus Lite's own server process, bench/milvus_lite.py) serve the same collections: what one
creates the other lists, what one writes the other finds (Search, Get, Answer), what one deletes or
drops the other no longer serves; Milvus-only refusals reach the client as FAILED_PRECONDITION."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lodestar.backbone import Backbone
from lodestar.bench.milvus_lite import free_port
from lodestar.services.cli import main
from lodestar.services.client import Client, ClientError

pytestmark = pytest.mark.slow

DOCS = [
    {"id": "guitar", "text": "A man plays an acoustic guitar on a small stage.", "metadata": {"kind": "music"}},
    {
        "id": "bonds",
        "text": "Government bond yields climbed to their highest level in a decade.",
        "metadata": {"kind": "money"},
    },
    {
        "id": "soccer",
        "text": "The football team won the championship after a penalty shootout.",
        "metadata": {"kind": "sport"},
    },
]


@pytest.fixture
def replicas(tmp_path: Path, tiny_backbone: Backbone, milvus_uri: str) -> Iterator[tuple[Client, Client]]:
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    procs, clients = [], []
    try:
        for i in range(2):
            port = free_port()
            env = {
                **os.environ,
                "LODESTAR_MODEL": str(folder),
                "LODESTAR_DATA_DIR": str(tmp_path / f"replica{i}"),  # nothing shared on disk
                "LODESTAR_DTYPE": "float32",
                "LODESTAR_MILVUS_URI": milvus_uri,
                "LODESTAR_ONLY": "embed,retrieve,compress,generate",
                "LODESTAR_TORCH_THREADS": "1",
            }
            log = open(tmp_path / f"replica{i}.log", "w")  # noqa: SIM115  (the process writes it)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "lodestar.services.cli", "serve", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            clients.append(Client(f"127.0.0.1:{port}", timeout=120))
        for c in clients:
            c.wait_ready(timeout=180)
        for s in clients[0].list_collections():  # the session's Milvus may hold another test's
            clients[0].drop_collection(s.name)
        yield clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_two_replicas_share_collections_through_milvus(
    replicas: tuple[Client, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas
    info = a.create_collection("shared", backend="milvus", chunk_tokens=0)
    assert info.config is not None and info.config.backend == "milvus"
    assert [s.name for s in b.list_collections()] == ["shared"]  # created through A, listed by B
    assert b.stats("shared").config.backend == "milvus"  # type: ignore[union-attr]

    assert b.upsert("shared", DOCS) == (3, 3)  # written through B
    hits = a.search("shared", DOCS[1]["text"], k=2, retriever="hybrid")[0]  # found through A
    assert hits[0].id == "bonds" and hits[0].metadata == {"kind": "money"}
    assert [h.id for h in a.search("shared", "guitar", k=3, filters=[("kind", "eq", "music")])[0]] == ["guitar"]
    got = a.get("shared", ["soccer", "nope"])
    assert got[0] is not None and got[0].text == DOCS[2]["text"] and got[1] is None

    answer = b.answer("Which team won the championship?", "shared", k=2, max_new_tokens=4)
    assert "soccer" in [h.id for h in answer.context.sources]  # type: ignore[union-attr]

    assert a.delete("shared", ["bonds"]) == 1
    assert "bonds" not in [h.id for h in b.search("shared", DOCS[1]["text"], k=3, retriever="sparse")[0]]
    assert b.stats("shared").documents == 2

    with pytest.raises(ClientError) as e:
        b.snapshot("shared")
    assert e.value.code == "FAILED_PRECONDITION" and "milvus-backup" in e.value.message

    a.drop_collection("shared")
    with pytest.raises(ClientError) as e:
        b.search("shared", "guitar")
    assert e.value.code == "NOT_FOUND"
    assert b.list_collections() == []

    # the command line creates one through B; A lists it with its backend
    assert main(["collection", "create", "cli-made", "--backend", "milvus", "--server", b.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["backend"] == "milvus"
    assert [(s.name, a.stats(s.name).config.backend) for s in a.list_collections()] == [("cli-made", "milvus")]  # type: ignore[union-attr]
    a.drop_collection("cli-made")


def test_milvus_errors_reach_the_client_as_statuses_never_internal(tiny_server, milvus_uri: str) -> None:  # type: ignore[no-untyped-def]
    dead = tiny_server(milvus_uri=f"http://127.0.0.1:{free_port()}", milvus_timeout_s=2)
    live = tiny_server(milvus_uri=milvus_uri)
    with Client(dead.address, timeout=60) as c:
        with pytest.raises(ClientError) as e:
            c.create_collection("m", backend="milvus")
        assert e.value.code == "UNAVAILABLE" and "Milvus is unreachable" in e.value.message
        with pytest.raises(ClientError) as e:  # names are unique across backends: checked in Milvus too
            c.create_collection("local")
        assert e.value.code == "UNAVAILABLE"
        assert c.embed(["the server itself still serves"]).vectors.shape[0] == 1
    with Client(live.address, timeout=60) as c:
        for s in c.list_collections():
            c.drop_collection(s.name)
        c.create_collection("m", backend="milvus", chunk_tokens=0)
        with pytest.raises(ClientError) as e:
            c.upsert("m", [{"id": "big", "text": "word " * 20000}])
        assert e.value.code == "INVALID_ARGUMENT" and "65535" in e.value.message
        with pytest.raises(ClientError) as e:
            c.search("m", "x", retriever="sparse", feedback_chunks=2)
        assert e.value.code == "INVALID_ARGUMENT"  # needs a learned side: the same check as on FAISS
        with pytest.raises(ClientError) as e:
            c.create_collection("p", backend="milvus", index="PCA16,Flat")
        assert e.value.code == "INVALID_ARGUMENT" and "on backend milvus use one of" in e.value.message
        c.drop_collection("m")
