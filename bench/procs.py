"""Local processes for the job tests and `lodestar bench index`: a private redis-server (free
port, no persistence, restartable: the tests restart it mid-job, losing its queued messages as a
real broker restart without persistence does) and `lodestar worker` processes.
Needs Debian's `redis-server` (`make test` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lodestar.errors import Unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    def __init__(self, folder: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise Unavailable("redis-server is not installed (apt-get install redis-server; `make test` does it)")
        self.exe = exe
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=open(self.folder / "redis.log", "ab"),
            stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise Unavailable(f"redis-server did not start on port {self.port} (see {self.folder / 'redis.log'})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as abrupt as a crash: nothing is saved (--save "")
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class WorkerProcess:
    """A `lodestar worker` process (solo pool: one chunk at a time), logging to `log`."""

    def __init__(self, name: str, broker: str, server: str, log: Path, env: dict[str, str] | None = None) -> None:
        full = {
            **os.environ,
            "LODESTAR_BROKER_URL": broker,
            "LODESTAR_SERVER": server,
            "LODESTAR_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lodestar.services.cli", "worker", "--hostname", f"{name}@%h"],
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            env=full,  # noqa: SIM115
        )

    def wait_ready(self, timeout: float = 180) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise Unavailable(f"worker {self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        raise Unavailable(
            f"worker {self.name} not ready after {timeout:.0f}s: {self.log.read_text(errors='replace')[-3000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: as abrupt as a crash (the chunk it holds is neither acknowledged nor committed)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
