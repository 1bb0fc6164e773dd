"""How the client's channel is made: message size, keepalive, retries with backoff, load balancing."""

from __future__ import annotations

import json
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if self.load_balancing not in LOAD_BALANCING:
            raise ValueError(f"unknown load_balancing {self.load_balancing!r}: valid are {', '.join(LOAD_BALANCING)}")
        if not 0 <= self.retries <= 4:
            raise ValueError(f"retries must be in 0..4 (gRPC allows 5 attempts in all); got {self.retries}")


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
    if c.keepalive_s:
        out += [
            ("grpc.keepalive_time_ms", int(c.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return out


def sync_channel(target: str, c: ChannelConfig) -> grpc.Channel:
    return grpc.insecure_channel(target, options=options(c))


def aio_channel(target: str, c: ChannelConfig) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=options(c))
