"""What the secure, observable edge costs: `lodestar bench embed --edge`.

Two embedding servers in this process share one loaded model: one with everything off (plaintext,
no tokens, no metrics, no access log), one with everything on (TLS, a bearer token checked against
a tokens file, Prometheus metrics, a JSON access-log line per RPC written to /dev/null). The same
clients' workload runs against each in turn, interleaved (off, on, off, on, ...), so drift on a shared
machine hits both alike; the medians' ratio is the cost. On a busy machine that ratio moves more
than the edge costs, so the edge's own time is also measured per call (Info, which does no engine
work) and turned into a bound on its share of the served pass.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.bench.served import _bar, _Clients, _settings_overrides

TARGET_COST = 0.03  # at most 3% of served throughput


def _secure_settings(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(server settings, client keyword arguments) for TLS + a token, files made in `folder`."""
    from lodestar.bench.certs import CA
    from lodestar.services.tokens import add_token

    ca = CA("bench CA")
    cert, key = ca.issue("lodestar", server=True).write(folder, "server")
    token = add_token(folder / "tokens.json", "bench", "read")
    server = {"tls_cert": cert, "tls_key": key, "tokens_file": folder / "tokens.json", "metrics_port": 0}
    return server, {"ca": ca.write(folder / "ca.crt"), "token": token}


def bench_edge_cost(
    texts: list[str],
    options: dict[str, Any],
    concurrency: int = 8,
    batch_size: int = 16,
    model: str | None = None,
    *,
    repeats: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Served embedding throughput with the edge all on vs all off; a JSON-able dict."""
    from lodestar.services.observability.context import JsonFormatter, RequestFilter
    from lodestar.services.runtime import Runtime
    from lodestar.services.server import BackgroundServer
    from lodestar.services.settings import Settings

    if not texts or repeats < 1:
        raise ValueError("bench_edge_cost needs texts and repeats >= 1")
    overrides = _settings_overrides(model)
    backbone = Runtime(Settings(**overrides), [])._build_engine(None).backbone
    base = {**overrides, "host": "127.0.0.1", "port": 0, "only": ("embed",)}
    # The access log is formatted and written for real, to /dev/null, as a log shipper's pipe would be.
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    sink.addFilter(RequestFilter())
    sink.setFormatter(JsonFormatter())
    access = logging.getLogger("lodestar.access")
    access.addHandler(sink)
    access.setLevel(logging.INFO)
    access.propagate = False
    servers: list[Any] = []
    clients: dict[str, _Clients] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="lodestar-edge-") as tmp:
            secure, client_kw = _secure_settings(Path(tmp))
            off = BackgroundServer(Settings(**base, access_log=False), backbone=backbone).start()
            servers.append(off)
            on = BackgroundServer(Settings(**base, **secure, access_log=True), backbone=backbone).start()
            servers.append(on)
            clients["off"] = _Clients(off.address, options, concurrency, texts[:2])
            clients["on"] = _Clients(on.address, options, concurrency, texts[:2], client_kw)
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            bar = _bar(len(texts) * repeats * 2, f"edge off/on x{repeats}", progress)
            for i in range(repeats):
                for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    runs[name].append(clients[name].run(texts, batch_size, bar))
            bar.close()
            per_call = _per_call_overhead(clients["off"].clients[0], clients["on"].clients[0])
            assert on.edge.metrics is not None
            scraped = _scrape(on.edge.metrics.port)
    finally:
        for c in clients.values():
            c.close()
        for s in servers:
            s.stop(grace=1)
        access.removeHandler(sink)
        access.propagate = True
        sink.close()
    out = {name: _summary(r) for name, r in runs.items()}
    cost = 1 - out["on"]["tokens_per_s"] / out["off"]["tokens_per_s"]
    # Paired by round: each on-run against the off-run next to it, so slow phases of the machine cancel.
    paired = [1 - a["tokens"] / a["wall_s"] / (b["tokens"] / b["wall_s"]) for a, b in zip(runs["on"], runs["off"])]
    # The edge's work is per call, not per token: its added time per call, times the calls of one
    # served pass, over that pass's wall time, bounds its share of throughput without the run-to-run noise.
    requests = runs["off"][0]["requests"]
    bound = per_call["added_us"] * 1e-6 * requests / float(np.median([r["wall_s"] for r in runs["off"]]))
    return {
        "model": model or "bundled",
        "concurrency": concurrency,
        "batch_size": batch_size,
        "texts": len(texts),
        "repeats": repeats,
        "off": out["off"],
        "on": out["on"],
        "on_features": ["tls", "bearer token (tokens file)", "prometheus metrics", "json access log"],
        "cost": round(cost, 4),
        "cost_paired_median": round(float(np.median(paired)), 4),
        "cost_paired_runs": [round(p, 4) for p in paired],
        "per_call": per_call,
        "cost_from_per_call": round(bound, 5),
        "target": TARGET_COST,
        "meets_target": bound <= TARGET_COST,
        "metrics_rpcs_counted": scraped,
        "host": {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d")},
    }


def _per_call_overhead(off: Any, on: Any, blocks: int = 6, calls: int = 300) -> dict[str, Any]:
    """Median latency of a call that does no engine work (Info) on each server, in alternating
    blocks, one client each, sequential; -> the edge's added microseconds per call."""
    medians: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(blocks):
        for name, client in (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off)):
            lat = []
            for _ in range(calls):
                t0 = time.perf_counter()
                client.info()
                lat.append(time.perf_counter() - t0)
            medians[name].append(float(np.median(lat)) * 1e6)
    off_us, on_us = float(np.median(medians["off"])), float(np.median(medians["on"]))
    return {
        "rpc": "EmbedService/Info",
        "calls": blocks * calls,
        "off_us": round(off_us, 1),
        "on_us": round(on_us, 1),
        "added_us": round(on_us - off_us, 1),
        "blocks_off_us": [round(x, 1) for x in medians["off"]],
        "blocks_on_us": [round(x, 1) for x in medians["on"]],
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    wall = float(np.median(walls))
    lat = np.array([x for r in runs for x in r["latencies_ms"]])
    return {
        "tokens_per_s": round(runs[0]["tokens"] / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "runs_wall_s": [round(w, 3) for w in walls],
    }


def _scrape(port: int) -> float:
    """Embed calls the secure server's /metrics counted (proof the metrics were on)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "lodestar_rpc_requests_total" and s.labels.get("method") == "Embed"
    )
