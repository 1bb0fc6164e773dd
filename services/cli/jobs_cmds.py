"""Commands of batch indexing: index (submit a job), jobs (list, show, watch, cancel, resume), worker."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lodestar.errors import LodestarError
from lodestar.services.cli.common import add_result_args, connect, connection, plain, print_obj, settings

if TYPE_CHECKING:
    from lodestar.services.client import Job


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based number, raw bytes) of each line: the server decodes and validates them."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            yield n, line.rstrip(b"\r\n")


def _source(file: str) -> Path:
    path = Path(file)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise LodestarError(f"{path} does not exist (give a jsonl file or a BEIR folder)")
    return path


def _summary(job: Job) -> dict[str, Any]:
    keys = (
        "id",
        "collection",
        "state",
        "documents",
        "written",
        "errors_count",
        "chunks",
        "chunks_done",
        "chunks_failed",
        "message",
        "workers",
        "mode",
    )
    return {k: getattr(job, k) for k in keys}


def follow(client: Any, job: Job, quiet: bool) -> Job:
    """Show a job's progress until it ends; -> its final state (errors included)."""
    from tqdm import tqdm

    bar = tqdm(total=job.documents, unit="doc", desc=f"job {job.id}", disable=quiet)
    for state in client.watch_job(job.id):
        bar.total = state.documents
        bar.n = state.processed
        bar.set_postfix(chunks=f"{state.chunks_done}/{state.chunks}", errors=state.errors_count, refresh=False)
        bar.refresh()
    bar.close()
    return client.get_job(job.id, max_errors=1000)


def _report(job: Job, as_json: bool) -> int:
    if as_json:
        print(json.dumps(plain(job)))
    else:
        print_obj(_summary(job), False)
        for e in job.errors[:20]:
            print(f"  line {e.line}: {e.message}")
        if job.errors_count > 20:
            print(f"  ... {job.errors_count - 20} more (`lodestar jobs show {job.id} --json`)")
    return 0 if job.state in ("done", "running", "staging") else 1


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    path = _source(args.file)
    total = sum(1 for _ in open(path, "rb"))
    with connect(args, timeout=None) as c:
        bar = tqdm(total=total, unit="line", desc="upload", disable=args.quiet)

        def lines() -> Iterator[tuple[int, bytes]]:
            for n, data in read_lines(path):
                bar.update(1)
                yield n, data

        job = c.submit_job(args.collection, lines(), source=str(path), chunk_docs=args.chunk_docs)
        bar.close()
        if args.wait:
            job = follow(c, job, args.quiet)
        elif not args.json:
            print(
                f"job {job.id} submitted ({job.documents} documents, {job.chunks} chunks); "
                f"follow it with `lodestar jobs watch {job.id}`",
                file=sys.stderr,
            )
    return _report(job, args.json)


def cmd_jobs(args: argparse.Namespace) -> int:

    with connect(args, timeout=None) as c:
        action = args.action or "list"
        if action == "list":
            jobs = c.list_jobs(args.limit)
            if args.json:
                print(json.dumps([_summary(j) for j in jobs]))
            for j in [] if args.json else jobs:
                print(
                    f"{j.id}  {j.state:9} {j.collection:16} {j.written:>9}/{j.documents:<9} docs "
                    f"{j.chunks_done:>5}/{j.chunks:<5} chunks {j.errors_count:>6} errors  {j.source}"
                )
            return 0
        if action == "show":
            return _report(c.get_job(args.id, max_errors=args.errors), args.json)
        if action == "watch":
            return _report(follow(c, c.get_job(args.id, max_errors=0), args.quiet), args.json)
        if action == "cancel":
            return _report(c.cancel_job(args.id), args.json)
        job = c.resume_job(args.id)
        return _report(follow(c, job, args.quiet) if args.wait else job, args.json)


def cmd_worker(args: argparse.Namespace) -> int:
    from lodestar.services.observability.context import configure_logging
    from lodestar.services.worker import main

    overrides = connection(args)
    overrides["worker_token"] = overrides.pop("token")  # --token: the one this worker calls with
    s = settings(
        broker_url=args.broker,
        worker_concurrency=args.concurrency,
        model=args.model,
        server=args.server,
        worker_metrics_port=args.metrics_port,
        **overrides,
    )
    if args.ping:
        from lodestar.services.worker import ping

        name, ok = ping(s, args.hostname)
        print(f"{name} {'answered' if ok else 'did not answer'}")
        return 0 if ok else 1
    configure_logging(s.log_level, s.log_format)
    extra = ["--hostname", args.hostname] if args.hostname else []
    main(s, extra)
    return 0


def cmd_bench_index(args: argparse.Namespace) -> int:
    from lodestar.bench.served import bench_index
    from lodestar.services.cli.common import write_result

    path = _source(args.corpus)
    lines = [(n, data) for n, data in read_lines(path) if data.strip()][: args.docs or None]
    result = bench_index(
        lines,
        mode=args.mode,
        worker_counts=tuple(int(w) for w in args.workers.split(",")),
        chunk_docs=args.chunk_docs,
        model=args.model,
        broker_url=args.broker or "",
        served_concurrency=args.served_clients,
        progress=not args.quiet,
    )
    result["corpus"] = str(path)
    write_result(result, args.out)
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add this module's commands: `sub` top level, groups["eval" | "bench" | "train"] below those."""
    ix = sub.add_parser("index", help="index a jsonl file or BEIR corpus into a collection as a batch job")
    ix.add_argument("file", help="jsonl ({id|_id, text, title?, metadata?}) or a BEIR folder")
    ix.add_argument("--collection", "-c", required=True)
    ix.add_argument("--wait", action="store_true", help="follow the job's progress until it ends")
    ix.add_argument("--chunk-docs", type=int, default=0, help="documents per task (default: the server's)")
    ix.add_argument("--json", action="store_true")
    ix.add_argument("--quiet", action="store_true")
    ix.set_defaults(func=cmd_index)

    jb = sub.add_parser("jobs", help="batch indexing jobs: list (default), show, watch, cancel, resume")
    jsub = jb.add_subparsers(dest="action")
    for name, text in (
        ("show", "a job's state and its errors"),
        ("watch", "follow a job until it ends"),
        ("cancel", "stop dispatching a job's chunks"),
        ("resume", "run a cancelled, failed or stalled job again"),
    ):
        a = jsub.add_parser(name, help=text)
        a.add_argument("id")
        a.add_argument("--json", action="store_true")
        a.add_argument("--quiet", action="store_true")
        a.add_argument("--errors", type=int, default=100, help="show: errors listed")
        a.add_argument("--wait", action="store_true", help="resume: follow the job")
    lst = jsub.add_parser("list", help="recent jobs")
    for p in (jb, lst):
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--json", action="store_true")
    jb.set_defaults(func=cmd_jobs)

    bi = groups["bench"].add_parser(
        "index", help="docs/s of an indexing job: in-process vs 1, 2 Celery worker processes"
    )
    bi.add_argument("--corpus", required=True, help="BEIR folder or jsonl")
    bi.add_argument("--docs", type=int, default=0, help="only the first N documents")
    bi.add_argument("--workers", default="1,2", help="worker process counts, comma-separated")
    bi.add_argument("--chunk-docs", type=int, default=32)
    bi.add_argument("--mode", default="mean")
    bi.add_argument("--broker", help="use this Redis instead of starting a private redis-server")
    bi.add_argument(
        "--served-clients",
        type=int,
        default=8,
        help="first embed the same chunk texts through a served Embed with N clients, the figure each run is compared to (0: skip)",
    )
    add_result_args(bi)
    bi.set_defaults(func=cmd_bench_index)

    w = sub.add_parser("worker", help="run a Celery indexing worker (needs LODESTAR_BROKER_URL and LODESTAR_SERVER)")
    w.add_argument("--broker", help="broker URL (default LODESTAR_BROKER_URL)")
    w.add_argument("--concurrency", type=int, help="tasks at once (default 1; each process loads the model)")
    w.add_argument("--hostname", help="worker name, e.g. w1@%%h")
    w.add_argument("--model")
    w.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics on this port (LODESTAR_WORKER_METRICS_PORT)"
    )
    w.add_argument(
        "--ping",
        action="store_true",
        help="do not run a worker: exit 0 when the worker named --hostname (default celery@ this host) answers a ping over the broker (the chart's liveness probe)",
    )
    w.set_defaults(func=cmd_worker)
