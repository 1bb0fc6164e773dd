"""Milvus Lite's own gRPC server (`milvus-lite server`, from the milvus-lite package) started as a
separate process on a free loopback port, so several Lodestar engines or `lodestar serve` processes
share one Milvus exactly as replicas share a Milvus deployment. The tests and `lodestar bench
retrieve --backend milvus` start it; a deployment runs Milvus itself (docs/scaling.md)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command() -> list[str]:
    """The milvus-lite entry point beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("milvus-lite")
    found = str(beside) if beside.exists() else shutil.which("milvus-lite")
    if not found:
        raise RuntimeError("milvus-lite is not installed: pip install 'lodestar[milvus]' (the milvus extra)")
    return [found, "server"]


class MilvusLiteServer:
    """`milvus-lite server --data-dir DIR --port PORT`; `uri` is what LODESTAR_MILVUS_URI takes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        log = open(data_dir.parent / f"milvus-lite-{self.port}.log", "wb")  # noqa: SIM115  (the process owns it)
        self.proc = subprocess.Popen(
            [*server_command(), "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} within 60 s")

    def __enter__(self) -> MilvusLiteServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
