"""`make chaos` (or `python -m lodestar.bench.chaos.run`): the whole chaos and fuzz suite, bounded and on
loopback; writes bench/results/chaos.json. Every part runs against a server with a tiny random model
(the suite tests the server, not the model) unless --model names a model folder."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from lodestar.bench.chaos.crash import kill_rounds, term_rounds
from lodestar.bench.chaos.floor import floor
from lodestar.bench.chaos.fuzz import fuzz
from lodestar.bench.chaos.overload import overload
from lodestar.bench.chaos.server import ServerProcess
from lodestar.bench.tinymodel import tiny_model


def stamp() -> dict[str, Any]:
    """When a part finished and how loaded the machine was (parts can be rerun alone with --update)."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg": os.getloadavg(), "isa": isa()}


def isa() -> str:
    """Which of the project's two kinds of CPU machine ran a part (docs/results.md, "Machines")."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return "avx512_bf16" if "avx512_bf16" in flags else "avx2" if "avx2" in flags else "other"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    ap.add_argument("--model", type=Path, default=None, help="a model folder (default: a tiny random Llama)")
    ap.add_argument("--requests", type=int, default=10_000, help="fuzzed requests")
    ap.add_argument("--clients", type=int, default=256, help="overload: concurrent clients")
    ap.add_argument("--overload-s", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=128, help="overload: texts, queries or documents per request")
    ap.add_argument(
        "--impolite-clients", action="store_true", help="overload: retry after 50-250 ms, ignoring retry-after-ms"
    )
    ap.add_argument("--overload-repeats", type=int, default=3, help="overload: runs, each with a fresh server")
    ap.add_argument("--kill-rounds", type=int, default=100)
    ap.add_argument("--term-rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="fuzz,overload,floor,kill,term", help="parts to run, comma-separated")
    ap.add_argument("--update", action="store_true", help="keep the other parts' results already in --out")
    args = ap.parse_args(argv)
    parts = set(args.only.split(","))
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.update and args.out.exists() else {}
    result |= {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="lodestar-chaos-") as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work / "tiny")
        result["model"] = "tiny random Llama (4 layers, 64 wide)" if args.model is None else str(args.model)
        if "fuzz" in parts:
            with ServerProcess(model, work / "fuzz", {"LODESTAR_MAX_NEW_TOKENS": "32"}) as server:
                report = fuzz(server.address, args.requests, seed=args.seed)
                result["fuzz"] = stamp() | report.to_json() | {"pass": report.ok}
            print("fuzz:", json.dumps({k: v for k, v in result["fuzz"].items() if k != "findings"}), flush=True)
        if "overload" in parts:
            runs = []
            for r in range(args.overload_repeats):  # a fresh server each time; the tail moves run to run
                with ServerProcess(model, work / f"overload{r}") as server:
                    runs.append(
                        overload(server, args.clients, args.overload_s, args.batch, polite=not args.impolite_clients)
                    )
            o = runs[-1] | {
                "repeats": [{k: v for k, v in run.items() if k.startswith("refused") or k == "codes"} for run in runs]
            }
            o["pass"] = all(
                run["internal_or_unknown"] == 0
                and run["unfinished_clients"] == 0
                and (run["refused_p99_ms"] is None or run["refused_p99_ms"] < 50)
                and run["idle_after_s"] is not None
                and run["idle_after_s"] <= 2
                for run in runs
            )
            result["overload"] = stamp() | o
            print("overload:", json.dumps(o), flush=True)
        if "floor" in parts:  # what the overload part's first burst costs gRPC itself (no target: a reading)
            result["first_burst_floor"] = stamp() | floor(model, work, args.clients)
            print("floor:", json.dumps(result["first_burst_floor"]), flush=True)
        if "kill" in parts:
            k = kill_rounds(model, work, rounds=args.kill_rounds, seed=args.seed)
            k["pass"] = k["lost"] == 0 and k["phantoms"] == 0
            result["sigkill"] = stamp() | k
            print("sigkill:", json.dumps(k), flush=True)
        if "term" in parts:
            t = term_rounds(model, work, rounds=args.term_rounds)
            t["pass"] = t["ok"] == t["rounds"]
            result["sigterm"] = stamp() | t
            print("sigterm:", json.dumps(t), flush=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    failed = [name for name, part in result.items() if isinstance(part, dict) and part.get("pass") is False]
    print(f"wrote {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "every part passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
