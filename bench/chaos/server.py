"""`lodestar serve` as a real process for the chaos suite: started on a free port with a given model
folder, its CPU time read from /proc, stopped by SIGTERM (timed) or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lodestar.bench.procs import free_port
from lodestar.errors import Unavailable
from lodestar.services.client import Client

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class ServerProcess:
    def __init__(self, model: Path, data_dir: Path, env: dict[str, str] | None = None, grace_s: float = 2.0) -> None:
        self.model = Path(model)
        self.data_dir = Path(data_dir)
        self.grace_s = grace_s
        self.env = {
            **os.environ,
            "LODESTAR_MODEL": str(self.model),
            "LODESTAR_DATA_DIR": str(self.data_dir),
            "LODESTAR_DTYPE": "float32",
            "LODESTAR_GRACE_PERIOD_S": str(grace_s),
            "LODESTAR_ACCESS_LOG": "false",
            "LODESTAR_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> ServerProcess:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lodestar.services.cli", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        with Client(self.address, timeout=30) as c:
            try:
                c.wait_ready(timeout=timeout)
            except Exception as exc:
                self.kill()
                raise Unavailable(f"server did not start: {self.log.read_text(errors='replace')[-2000:]}") from exc
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the process has used."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def idle_after(self, since: float, limit_s: float = 30.0, window_s: float = 0.5, busy: float = 0.1) -> float | None:
        """Seconds from `since` (time.monotonic()) until the process used under `busy` of a core over
        a `window_s` window; None if not within `limit_s`."""
        end = since + limit_s
        while time.monotonic() < end:
            t0, c0 = time.monotonic(), self.cpu_seconds()
            time.sleep(window_s)
            if (self.cpu_seconds() - c0) / (time.monotonic() - t0) < busy:
                return max(0.0, t0 - since)
        return None

    def terminate(self, timeout: float = 60) -> tuple[int | None, float]:
        """SIGTERM; -> (exit code, None if it did not exit within `timeout`; seconds to exit)."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
