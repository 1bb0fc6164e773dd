"""The request a log line belongs to (a context variable the RPC interceptor sets), and the log formats.

Every line logged while a request is handled carries its request id: lines from the handler's task,
and from a thread that runs work for it when that thread was started with the request's context
(services/streaming.py does so for Generate and Answer). Threads shared by many requests (the
embedding batcher) log without one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # a caller's id is kept only if it is safe to log


@dataclass
class RequestInfo:
    """What is known about the call in flight: the log fields of its access line."""

    request_id: str
    method: str
    token: str = "-"  # the name of the token used (never the token), "-" without one


_CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("lodestar_request", default=None)


def current() -> RequestInfo | None:
    return _CURRENT.get()


def enter(info: RequestInfo) -> None:
    """Make `info` the current request of this task (and of what it starts with its context)."""
    _CURRENT.set(info)


def request_id_from(metadata: Any) -> str:
    """The caller's `x-request-id` when it is a sane token, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if _VALID_ID.match(text):
                return text
            break
    return uuid.uuid4().hex[:16]


class RequestFilter(logging.Filter):
    """Puts the current request id on every record (`request_id`, and `request` = " [id]" or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = _CURRENT.get()
        record.request_id = info.request_id if info else ""
        record.request = f" [{info.request_id}]" if info else ""
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", ""):
            out["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """The process's root handler: stderr, the request filter, text or JSON lines (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
