"""How the client's channel is made: message size, keepalive, retries with backoff, load balancing,
TLS (server CA, client certificate for mTLS) and the bearer token sent with every call."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
LOAD_BALANCING = ("round_robin", "pick_first")


@dataclass(frozen=True)
class ChannelConfig:
    """Client-side transport settings; the defaults suit one server or a `dns:///` name of several."""

    max_message_bytes: int = 64 << 20
    keepalive_s: float = 60.0  # ping an idle connection this often while a call is open; 0 = never
    retries: int = 4  # extra attempts on UNAVAILABLE and RESOURCE_EXHAUSTED (gRPC caps attempts at 5); 0 = none
    initial_backoff_s: float = 0.2  # first retry after up to this long (gRPC adds jitter), then x2 up to max_backoff_s
    max_backoff_s: float = 5.0
    load_balancing: str = "round_robin"  # round_robin: each call to the next address `dns:///name` resolves to
    tls_server_name: str = (
        ""  # the name the server's certificate must carry when it is not the address's host (a probe on 127.0.0.1)
    )

    def __post_init__(self) -> None:
        if self.load_balancing not in LOAD_BALANCING:
            raise ValueError(f"unknown load_balancing {self.load_balancing!r}: valid are {', '.join(LOAD_BALANCING)}")
        if not 0 <= self.retries <= 4:
            raise ValueError(f"retries must be in 0..4 (gRPC allows 5 attempts in all); got {self.retries}")


def with_overrides(config: ChannelConfig | None, **given: Any) -> ChannelConfig:
    """`config` (default ChannelConfig()) with the fields given as keywords that are not None."""
    base = config or ChannelConfig()
    changes = {k: v for k, v in given.items() if v is not None}
    return ChannelConfig(**{**base.__dict__, **changes}) if changes else base


def service_config(c: ChannelConfig) -> str:
    """gRPC service config: the balancing policy and a retry policy for every method but health checks
    (a health probe reports UNAVAILABLE at once instead of retrying it)."""
    methods: list[dict[str, Any]] = [{"name": [{"service": "grpc.health.v1.Health"}]}]
    if c.retries:
        methods.append(
            {
                "name": [{}],  # the default for every other method
                "retryPolicy": {
                    "maxAttempts": c.retries + 1,
                    "initialBackoff": f"{c.initial_backoff_s}s",
                    "maxBackoff": f"{c.max_backoff_s}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": list(RETRYABLE),
                },
            }
        )
    return json.dumps({"loadBalancingConfig": [{c.load_balancing: {}}], "methodConfig": methods})


def options(c: ChannelConfig) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", c.max_message_bytes),
        ("grpc.max_receive_message_length", c.max_message_bytes),
        ("grpc.service_config", service_config(c)),
        ("grpc.enable_retries", 1 if c.retries else 0),
    ]
    if c.tls_server_name:
        out.append(("grpc.ssl_target_name_override", c.tls_server_name))
    if c.keepalive_s:
        out += [
            ("grpc.keepalive_time_ms", int(c.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return out


PEM = str | Path | bytes  # a file's path, or the PEM bytes themselves


def _pem(value: PEM | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from None


@dataclass(frozen=True)
class Security:
    """Who the client trusts and who it says it is: TLS (the system's roots, or `ca`), a client
    certificate for mTLS (`cert` and `key`), and a bearer token sent in every call's metadata."""

    tls: bool = False
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    token: str = field(default="", repr=False)  # never printed

    @classmethod
    def of(
        cls,
        tls: bool = False,
        ca: PEM | None = None,
        cert: PEM | None = None,
        key: PEM | None = None,
        token: str | None = None,
    ) -> Security:
        """From paths or PEM bytes; a CA or a client certificate implies TLS."""
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs its key: give cert and key together")
        return cls(bool(tls or ca or cert), _pem(ca), _pem(cert), _pem(key), token or "")

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """What every call carries: the token as `authorization: Bearer ...` (None: nothing)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def explain(self, code: str, details: str) -> str:
        """A transport failure's message with what to change when TLS is the likely cause."""
        if code != "UNAVAILABLE":
            return details
        if "CERTIFICATE_VERIFY_FAILED" in details:
            return (
                f"{details} -- the server's certificate is not signed by a CA this client trusts: "
                "pass the server's CA (ca=..., --tls-ca or LODESTAR_TLS_CA)"
            )
        if "Socket closed" in details or "WRONG_VERSION_NUMBER" in details:
            if not self.tls:
                return (
                    f"{details} -- if the server uses TLS, connect with TLS (tls=True or ca=...; "
                    "--tls / --tls-ca or LODESTAR_TLS_CA)"
                )
            hint = "if the server is plaintext, connect without TLS"
            if self.cert is None:
                hint += "; if it requires client certificates (mTLS), pass cert= and key= (--tls-cert, --tls-key)"
            return f"{details} -- {hint}"
        return details


def sync_channel(target: str, c: ChannelConfig, security: Security | None = None) -> grpc.Channel:
    creds = security.credentials() if security else None
    if creds is None:
        return grpc.insecure_channel(target, options=options(c))
    return grpc.secure_channel(target, creds, options=options(c))


def aio_channel(target: str, c: ChannelConfig, security: Security | None = None) -> grpc.aio.Channel:
    creds = security.credentials() if security else None
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options(c))
    return grpc.aio.secure_channel(target, creds, options=options(c))
