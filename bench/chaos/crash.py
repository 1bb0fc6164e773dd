"""Process deaths: SIGKILL rounds during upserts and deletes (no acknowledged write lost, no phantom),
and SIGTERM rounds under heavy load (exit 0 within grace + 2 s)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from lodestar.bench.chaos.server import ServerProcess
from lodestar.embed.v1 import embed_pb2 as epb
from lodestar.embed.v1 import embed_pb2_grpc as epb_grpc
from lodestar.retrieve.v1 import retrieve_pb2 as rpb
from lodestar.retrieve.v1 import retrieve_pb2_grpc as rpb_grpc
from lodestar.services.server import JOINED

COLLECTION = "crash"
ABSENT = None
LONG = "a long text to keep the model busy while the server is told to stop " * 8


class Ledger:
    """What the client was told: per id its acknowledged text (None = deleted), and the writes in
    flight when the server died (either outcome is allowed for those)."""

    def __init__(self) -> None:
        self.acked: dict[str, str | None] = {}
        self.pending: dict[str, str | None] = {}
        self.lock = threading.Lock()
        self.acknowledged = 0

    def allowed(self, doc_id: str) -> set[str | None]:
        out = {self.acked.get(doc_id)}
        if doc_id in self.pending:
            out.add(self.pending[doc_id])
        return out


def _verify(server: ServerProcess, ledger: Ledger) -> dict[str, int]:
    """Compare the collection with the ledger; -> lost and phantom counts. Settles the ledger."""
    with grpc.insecure_channel(server.address) as ch:
        retrieve = rpb_grpc.RetrieveServiceStub(ch)
        ids = sorted(set(ledger.acked) | set(ledger.pending))
        found: dict[str, str | None] = {}
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            got = retrieve.Get(rpb.GetRequest(collection=COLLECTION, ids=part), timeout=60)
            for doc_id, doc, ok in zip(part, got.documents, got.found):
                found[doc_id] = doc.text if ok else ABSENT
        documents = retrieve.Stats(rpb.StatsRequest(collection=COLLECTION), timeout=60).documents
    lost = sum(1 for d in ids if found[d] not in ledger.allowed(d))
    present = sum(1 for v in found.values() if v is not None)
    phantoms = max(0, documents - present)  # documents the store holds that no write put there
    ledger.acked = dict(found)
    ledger.pending.clear()
    return {"lost": lost, "phantoms": phantoms, "documents": documents}


def _writer(server: ServerProcess, ledger: Ledger, stop: threading.Event, rng: random.Random, round_no: int) -> None:
    with grpc.insecure_channel(server.address) as ch:
        retrieve = rpb_grpc.RetrieveServiceStub(ch)
        n = 0
        while not stop.is_set():
            n += 1
            live = [d for d, v in ledger.acked.items() if v is not None]
            ops: dict[str, str | None] = {}
            if live and rng.random() < 0.3:
                ops = {d: None for d in rng.sample(live, min(3, len(live)))}
            else:
                for j in range(5):
                    doc_id = rng.choice(live) if live and rng.random() < 0.3 else f"r{round_no}-{n}-{j}"
                    ops[doc_id] = f"version {round_no}.{n}.{j} of {doc_id}: text about topic {rng.randint(0, 50)}"
            with ledger.lock:
                ledger.pending.update(ops)
            try:
                if any(t is None for t in ops.values()):
                    retrieve.Delete(rpb.DeleteRequest(collection=COLLECTION, ids=list(ops)), timeout=30)
                else:
                    docs = [rpb.Document(id=d, text=t or "") for d, t in ops.items()]
                    retrieve.Upsert(rpb.UpsertRequest(collection=COLLECTION, documents=docs), timeout=30)
            except grpc.RpcError:
                return  # the server died mid-call: these stay pending (either outcome allowed)
            with ledger.lock:
                ledger.acked.update(ops)
                for d in ops:
                    ledger.pending.pop(d, None)
                ledger.acknowledged += len(ops)


def kill_rounds(model: Path, work: Path, rounds: int = 100, seed: int = 0) -> dict[str, Any]:
    """`rounds` times: start, verify against the ledger, write and delete, SIGKILL at a random moment."""
    rng = random.Random(seed)
    ledger = Ledger()
    lost = phantoms = 0
    start = time.monotonic()
    data = work / "kill-data"
    for r in range(rounds + 1):
        with ServerProcess(model, data) as server:
            if r == 0:
                with grpc.insecure_channel(server.address) as ch:
                    rpb_grpc.RetrieveServiceStub(ch).CreateCollection(
                        rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name=COLLECTION)), timeout=60
                    )
            else:
                check = _verify(server, ledger)
                lost += check["lost"]
                phantoms += check["phantoms"]
            if r == rounds:
                break
            stop = threading.Event()
            t = threading.Thread(target=_writer, args=(server, ledger, stop, rng, r), daemon=True)
            t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            stop.set()
            t.join(60)
    return {
        "rounds": rounds,
        "acknowledged_writes": ledger.acknowledged,
        "lost": lost,
        "phantoms": phantoms,
        "final_documents": sum(1 for v in ledger.acked.values() if v is not None),
        "seconds": round(time.monotonic() - start, 1),
    }


def _load(server: ServerProcess, stop: threading.Event, kind: str) -> None:
    with grpc.insecure_channel(server.address) as ch:
        embed, retrieve = epb_grpc.EmbedServiceStub(ch), rpb_grpc.RetrieveServiceStub(ch)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if kind == "embed":
                    embed.Embed(epb.EmbedRequest(texts=[LONG] * 96), timeout=60)
                elif kind == "search":
                    retrieve.Search(rpb.SearchRequest(collection="load", queries=[LONG] * 1024), timeout=300)
                else:
                    docs = [rpb.Document(id=f"{kind}-{n}-{j}", text=LONG) for j in range(200)]
                    retrieve.Upsert(rpb.UpsertRequest(collection="load", documents=docs), timeout=300)
            except grpc.RpcError:
                time.sleep(0.05)


def term_rounds(model: Path, work: Path, rounds: int = 10, grace_s: float = 2.0, load_s: float = 2.0) -> dict[str, Any]:
    """`rounds` times: a server under 8 embedders, 2 upserters and a 1,024-query Search gets SIGTERM."""
    results: list[dict[str, Any]] = []
    for r in range(rounds):
        env = {"LODESTAR_MAX_BATCH_TOKENS": "2048", "LODESTAR_LOG_LEVEL": "INFO"}  # INFO: the join's line
        server = ServerProcess(model, work / f"term-{r}", env, grace_s=grace_s)
        with server:
            with grpc.insecure_channel(server.address) as ch:
                rpb_grpc.RetrieveServiceStub(ch).CreateCollection(
                    rpb.CreateCollectionRequest(config=rpb.CollectionConfig(name="load")), timeout=60
                )
            stop = threading.Event()
            kinds = ["embed"] * 8 + ["upsert-a", "upsert-b", "search"]
            threads = [threading.Thread(target=_load, args=(server, stop, k), daemon=True) for k in kinds]
            for t in threads:
                t.start()
            time.sleep(load_s)
            code, seconds = server.terminate(timeout=grace_s + 60)
            stop.set()
            out = server.output()
        results.append(
            {
                "exit_code": code,
                "seconds": round(seconds, 2),
                "within_grace_plus_2s": code == 0 and seconds <= grace_s + 2,
                "aborted": "terminate called" in out,
                "threads_joined": JOINED in out,
            }
        )
    ok = sum(1 for r in results if r["within_grace_plus_2s"] and not r["aborted"] and r["threads_joined"])
    return {
        "rounds": rounds,
        "grace_s": grace_s,
        "ok": ok,
        "exit_codes": [r["exit_code"] for r in results],
        "threads_joined": sum(1 for r in results if r["threads_joined"]),
        "max_seconds": max(float(r["seconds"]) for r in results) if results else None,
        "seconds": [r["seconds"] for r in results],
    }
