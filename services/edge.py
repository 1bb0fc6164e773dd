"""What stands between the network and the servicers of one server, built from its settings: TLS
credentials, the interceptors (tracing, request id + metrics + access log, auth; the error
interceptor is added by the factory, innermost), the /metrics server and the engines' telemetry.

Open by default: no certificate means plaintext, no tokens file means every RPC is open; the
start-up log says which, so nobody runs open by accident without being told.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry

from lodestar.errors import InvalidInput
from lodestar.services.auth import AuthInterceptor
from lodestar.services.observability.metrics import EngineMetrics, MetricsServer, RpcMetrics, RuntimeCollector
from lodestar.services.observability.rpc import ObserveInterceptor
from lodestar.services.observability.tracing import Tracing, start_tracing
from lodestar.services.runtime import Runtime
from lodestar.services.settings import Settings
from lodestar.services.tls import CertificateFiles, server_credentials
from lodestar.services.tokens import TokenFile
from lodestar.telemetry import Telemetry, combine

log = logging.getLogger(__name__)


@dataclass
class Edge:
    interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    certificates: CertificateFiles | None = None
    tokens: TokenFile | None = None
    metrics: MetricsServer | None = None
    tracing: Tracing | None = None

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Add the listening port: TLS when a certificate is configured, else plaintext."""
        if self.certificates is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, server_credentials(self.certificates))

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tracing is not None:
            self.tracing.close()


def _certificates(s: Settings) -> CertificateFiles | None:
    if s.tls_cert is None and s.tls_key is None:
        if s.tls_client_ca is not None:
            raise InvalidInput(
                "LODESTAR_TLS_CLIENT_CA (mTLS) needs TLS too: set LODESTAR_TLS_CERT and LODESTAR_TLS_KEY"
            )
        return None
    if s.tls_cert is None or s.tls_key is None:
        raise InvalidInput("TLS needs both a certificate and its key: set LODESTAR_TLS_CERT and LODESTAR_TLS_KEY")
    return CertificateFiles(s.tls_cert, s.tls_key, s.tls_client_ca)


def build_edge(settings: Settings, runtime: Runtime) -> Edge:
    """Everything the settings turn on; the metrics server is listening when this returns."""
    edge = Edge(certificates=_certificates(settings))
    if settings.tokens_file is not None:
        edge.tokens = TokenFile(settings.tokens_file)
    try:
        edge.tracing = start_tracing(settings.otlp_endpoint)
        rpc_metrics, telemetry = _metrics(settings, runtime, edge)
        if edge.tracing is not None:
            telemetry.append(edge.tracing)
            edge.interceptors.append(edge.tracing.interceptor)
        runtime.telemetry = combine(telemetry)
        edge.interceptors.append(ObserveInterceptor(rpc_metrics, settings.access_log))
        if edge.tokens is not None:
            edge.interceptors.append(AuthInterceptor(edge.tokens))
    except BaseException:
        edge.close()
        raise
    _announce(settings, edge)
    return edge


def _metrics(settings: Settings, runtime: Runtime, edge: Edge) -> tuple[RpcMetrics | None, list[Telemetry]]:
    if settings.metrics_port is None:
        return None, []
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry)
    engines = EngineMetrics(registry)
    registry.register(RuntimeCollector(runtime))
    edge.metrics = MetricsServer(registry, settings.host, settings.metrics_port)
    return rpc, [engines]


def _announce(s: Settings, edge: Edge) -> None:
    """Say at start-up what is protected and what is not."""
    if edge.certificates is None:
        log.warning("transport: plaintext (set LODESTAR_TLS_CERT and LODESTAR_TLS_KEY for TLS)")
    else:
        mtls = f"; client certificates required (mTLS, CA {s.tls_client_ca})" if s.tls_client_ca else ""
        log.info("transport: TLS with %s%s", s.tls_cert, mtls)
    if edge.tokens is None:
        log.warning(
            "authentication: off -- every RPC is open to anyone who can reach the port "
            "(set LODESTAR_TOKENS_FILE; `lodestar token create` makes one)"
        )
    else:
        log.info("authentication: bearer tokens from %s (%d tokens)", edge.tokens.path, len(edge.tokens.entries()))
