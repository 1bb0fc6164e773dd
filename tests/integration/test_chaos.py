"""The fast part of the chaos suite (`make chaos` runs all of it: bench/chaos/): a few hundred fuzzed
requests over every RPC, one overload of a `lodestar serve` process, and the first-burst floor part
in small. SIGTERM under load is tests/integration/test_load.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lodestar.backbone import Backbone
from lodestar.bench.chaos.floor import floor
from lodestar.bench.chaos.fuzz import SERVICES, fuzz
from lodestar.bench.chaos.overload import overload
from lodestar.bench.chaos.server import ServerProcess


def test_fuzzed_requests_get_no_internal_error_and_short_messages(tiny_server: Any) -> None:
    srv = tiny_server(max_new_tokens=32)
    report = fuzz(srv.address, requests=300, seed=1, deadline=10.0)
    summary = report.to_json()
    assert report.requests == 300 and summary["methods"] == sum(len(s.methods) for s in SERVICES)  # every RPC
    assert not report.bad, summary["findings"]
    assert not report.long_messages, summary["findings"]
    assert not report.overruns, summary["findings"]
    assert report.server_alive


def test_overload_is_refused_fast_and_the_server_goes_idle(tmp_path: Path, tiny_backbone: Backbone) -> None:
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    with ServerProcess(folder, tmp_path / "data", {"LODESTAR_MAX_QUEUED_TEXTS": "512"}) as server:
        result = overload(server, clients=32, seconds=4.0)
    assert result["refused"] > 0 and result["ok"] > 0  # past the budget refused, the rest served
    assert result["internal_or_unknown"] == 0
    assert result["unfinished_clients"] == 0  # every accepted request finished (or hit its deadline)
    assert result["idle_after_s"] is not None  # the server's CPU went idle once the clients left


def test_first_burst_floor_reads_a_bare_server_and_lodestar(tmp_path: Path, tiny_backbone: Backbone) -> None:
    """The floor part answers one burst from each client on both servers: the bare one refuses
    Embed with RESOURCE_EXHAUSTED, Lodestar refuses it at admission (more texts than the budget)."""
    folder = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    result = floor(folder, tmp_path, clients=8, rounds=1)
    assert result["bare_grpc_aio"]["Info"]["codes"] == {"OK": 8}
    assert result["bare_grpc_aio"]["Embed"]["codes"] == {"RESOURCE_EXHAUSTED": 8}
    assert result["lodestar"]["Info"]["codes"] == {"OK": 8}
    assert result["lodestar"]["Embed"]["codes"] == {"INVALID_ARGUMENT": 8}
    assert result["lodestar"]["Embed"]["server_cpu_ms_per_burst"] >= 0
