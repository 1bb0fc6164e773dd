"""TLS, mTLS and certificate rotation with real handshakes (certificates made here), and the scope
matrix: every RPC of every service called with no token, an unknown token, and a token of each scope."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass

from lodestar.bench.certs import CA, Pair
from lodestar.services.auth import OPEN_SERVICES, SCOPE_OF
from lodestar.services.client import ChannelConfig, Client, ClientError
from lodestar.services.server import SERVICERS
from lodestar.services.tokens import SCOPES, add_token, revoke_token

NO_RETRY = ChannelConfig(retries=0)  # a refused handshake fails at once instead of after backoff


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server CA and its server certificate, a client CA and a client certificate, and a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    ca, client_ca, stranger = CA("server CA"), CA("client CA"), CA("stranger CA")
    cert, key = ca.issue("lodestar", server=True).write(d, "server")
    client_cert, client_key = client_ca.issue("app", server=False).write(d, "client")
    bad_cert, bad_key = stranger.issue("intruder", server=False).write(d, "intruder")
    return {
        "dir": d,
        "ca": ca.write(d / "ca.crt"),
        "client_ca": client_ca.write(d / "client-ca.crt"),
        "stranger": stranger.write(d / "stranger.crt"),
        "cert": cert,
        "key": key,
        "client": (client_cert, client_key),
        "intruder": (bad_cert, bad_key),
    }


def test_tls_serves_and_says_what_is_wrong(tiny_server: Any, pki: dict[str, Any]) -> None:
    srv = tiny_server(only=("embed",), tls_cert=pki["cert"], tls_key=pki["key"])
    with Client(srv.address, ca=pki["ca"], channel=NO_RETRY) as c:
        assert c.health() == "SERVING"
        assert c.embed(["over TLS"]).vectors.shape[0] == 1
    with Client(f"localhost:{srv.port}", ca=pki["ca"].read_bytes(), channel=NO_RETRY) as c:
        assert c.info().model  # the certificate names localhost too; PEM bytes work as well as a path
    with Client(srv.address, channel=NO_RETRY) as c, pytest.raises(ClientError) as plain:
        c.info()
    assert plain.value.code == "UNAVAILABLE" and "if the server uses TLS" in plain.value.message
    with Client(srv.address, ca=pki["stranger"], channel=NO_RETRY) as c, pytest.raises(ClientError) as wrong:
        c.info()
    assert "not signed by a CA this client trusts" in wrong.value.message


def test_tls_client_against_a_plaintext_server(tiny_server: Any, pki: dict[str, Any]) -> None:
    srv = tiny_server(only=("embed",))
    with Client(srv.address, ca=pki["ca"], channel=NO_RETRY) as c, pytest.raises(ClientError) as err:
        c.info()
    assert err.value.code == "UNAVAILABLE" and "if the server is plaintext" in err.value.message


def test_mtls_refuses_clients_without_a_certificate_the_ca_signed(tiny_server: Any, pki: dict[str, Any]) -> None:
    srv = tiny_server(only=("embed",), tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["client_ca"])
    cert, key = pki["client"]
    with Client(srv.address, ca=pki["ca"], cert=cert, key=key, channel=NO_RETRY) as c:
        assert c.info().model
    with Client(srv.address, ca=pki["ca"], channel=NO_RETRY) as c, pytest.raises(ClientError) as none:
        c.info()
    assert "mTLS" in none.value.message
    bad_cert, bad_key = pki["intruder"]
    with Client(srv.address, ca=pki["ca"], cert=bad_cert, key=bad_key, channel=NO_RETRY) as c:
        with pytest.raises(ClientError) as stranger:
            c.info()
    assert stranger.value.code == "UNAVAILABLE"
    assert srv.edge.certificates is not None and srv.edge.certificates.client_ca == pki["client_ca"]


def _replace(path: Path, data: bytes) -> None:
    """What cert-manager does: the new file appears whole, under the same name."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_certificate_rotation_while_a_client_keeps_calling(tiny_server: Any, tmp_path: Path) -> None:
    old_ca, new_ca = CA("before rotation"), CA("after rotation")
    cert, key = old_ca.issue("lodestar", server=True).write(tmp_path, "server")
    old_pem, new_pem = old_ca.write(tmp_path / "old.crt"), new_ca.write(tmp_path / "new.crt")
    srv = tiny_server(only=("embed",), tls_cert=cert, tls_key=key)
    calls, failures = [0], []
    stop = threading.Event()

    def keep_calling() -> None:
        with Client(srv.address, ca=old_pem, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.embed(["still here"])
                    calls[0] += 1
                except ClientError as exc:  # pragma: no cover - reported below
                    failures.append(exc)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        time.sleep(0.5)
        new: Pair = new_ca.issue("lodestar", server=True)
        _replace(cert, new.cert)  # the key does not match for a moment: the old pair keeps serving
        with Client(srv.address, ca=old_pem, channel=NO_RETRY) as c:
            assert c.info().model
        _replace(key, new.key)
        deadline = time.monotonic() + 10
        while True:  # the next handshake takes the new pair
            with Client(srv.address, ca=new_pem, channel=NO_RETRY) as c:
                try:
                    assert c.info().model
                    break
                except ClientError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.1)
        with Client(srv.address, ca=old_pem, channel=NO_RETRY) as c, pytest.raises(ClientError):
            c.info()  # a new connection gets the new certificate, which the old CA did not sign
        before = calls[0]
        time.sleep(0.5)
    finally:
        stop.set()
        caller.join()
    assert not failures and calls[0] > before  # the connection open across the rotation never failed
    assert srv.edge.certificates is not None and srv.edge.certificates.loads == 2


# --- tokens and scopes -----------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.json"
    made = {scope: add_token(path, f"{scope}-app", scope) for scope in SCOPES}
    made["all"] = add_token(path, "everything", ",".join(SCOPES))
    return path, made


def _rpcs() -> Iterator[tuple[str, Any]]:
    for servicer in SERVICERS.values():
        for method in servicer.SERVICE.methods:
            yield f"/{servicer.SERVICE.full_name}/{method.name}", method


def _call(channel: grpc.Channel, path: str, method: Any, metadata: Any) -> str:
    """Call `path` with an empty request; -> the status code name."""
    request = GetMessageClass(method.input_type)()
    response = GetMessageClass(method.output_type)
    kw = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": response.FromString}
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kw)(iter([request]), metadata=metadata, timeout=30))
        elif method.client_streaming:
            channel.stream_unary(path, **kw)(iter([request]), metadata=metadata, timeout=30)
        elif method.server_streaming:
            list(channel.unary_stream(path, **kw)(request, metadata=metadata, timeout=30))
        else:
            channel.unary_unary(path, **kw)(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def test_scope_matrix_every_rpc(
    tiny_server: Any, tokens: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    path, made = tokens
    srv = tiny_server(tokens_file=path)
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(srv.address) as channel:
        for rpc, method in _rpcs():
            service, name = rpc[1:].split("/")
            need = SCOPE_OF[service][name]
            assert _call(channel, rpc, method, None) == "UNAUTHENTICATED", rpc
            wrong = (("authorization", "Bearer lst_not-a-token"),)
            assert _call(channel, rpc, method, wrong) == "UNAUTHENTICATED", rpc
            for scope, token in made.items():
                code = _call(channel, rpc, method, (("authorization", f"Bearer {token}"),))
                allowed = scope in (need, "all")
                assert (code not in ("UNAUTHENTICATED", "PERMISSION_DENIED")) == allowed, (rpc, scope, code)
        health = _call(channel, "/grpc.health.v1.Health/Check", _health_method(), None)
        assert health == "OK"
    logged = "\n".join(r.getMessage() for r in caplog.records) + str([r.__dict__ for r in caplog.records])
    for token in made.values():
        assert token not in logged  # tokens never reach a log line
    assert "token=read-app" in logged  # the access log names the token instead


def _health_method() -> Any:
    from grpc_health.v1 import health_pb2

    assert "grpc.health.v1.Health" in OPEN_SERVICES
    return health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]


def test_client_tokens_messages_and_revocation(tiny_server: Any, tokens: tuple[Path, dict[str, str]]) -> None:
    path, made = tokens
    srv = tiny_server(only=("embed", "retrieve"), tokens_file=path)
    with Client(srv.address, token=made["read"]) as c:
        assert c.embed(["a reader may embed"]).vectors.shape[0] == 1
        with pytest.raises(ClientError) as denied:
            c.create_collection("notes")
        assert denied.value.code == "PERMISSION_DENIED"
        assert "needs scope 'admin'" in denied.value.message and made["read"] not in denied.value.message
    with Client(srv.address) as c, pytest.raises(ClientError) as missing:
        c.embed(["anonymous"])
    assert missing.value.code == "UNAUTHENTICATED" and "bearer token" in missing.value.message
    with Client(srv.address) as c:
        assert c.health() == "SERVING"  # health stays open
    revoke_token(path, "read-app")
    deadline = time.monotonic() + 10
    with Client(srv.address, token=made["read"]) as c:
        while True:  # the server re-reads the file within about a second
            try:
                c.embed(["still allowed?"])
            except ClientError as exc:
                assert exc.code == "UNAUTHENTICATED"
                break
            assert time.monotonic() < deadline, "a revoked token still works"
            time.sleep(0.2)


def test_cli_and_async_client_connect_with_tls_and_a_token(
    tiny_server: Any, pki: dict[str, Any], tokens: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import json
    import subprocess
    import sys

    from lodestar.services.client import AsyncClient

    path, made = tokens
    srv = tiny_server(only=("embed",), tls_cert=pki["cert"], tls_key=pki["key"], tokens_file=path)
    base = [sys.executable, "-m", "lodestar.services.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LODESTAR_")}
    ok = subprocess.run(
        [*base, "info", "--server", srv.address, "--tls-ca", str(pki["ca"]), "--json"],
        capture_output=True,
        text=True,
        env={**env, "LODESTAR_TOKEN": made["read"]},
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["health"] == "SERVING"
    refused = subprocess.run(
        [*base, "--server", srv.address, "--tls-ca", str(pki["ca"]), "embed", "hello", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "UNAUTHENTICATED"

    async def call() -> str:
        async with AsyncClient(srv.address, ca=pki["ca"], token=made["read"]) as c:
            return (await c.info()).model  # type: ignore[misc]

    assert asyncio.run(call())


def test_startup_log_says_what_is_open(tiny_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tiny_server(only=("embed",))
    assert "transport: plaintext" in caplog.text
    assert "authentication: off -- every RPC is open" in caplog.text


def test_health_command_as_the_chart_probes_a_tls_server(tiny_server: Any, pki: dict[str, Any]) -> None:
    """The chart's exec probe: `lodestar health` on 127.0.0.1 naming the certificate's host, with the pod's
    own certificate under mTLS; a name the certificate lacks fails the handshake (exit 1)."""
    import subprocess
    import sys

    srv = tiny_server(only=("embed",), tls_cert=pki["cert"], tls_key=pki["key"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LODESTAR_")}
    base = [sys.executable, "-m", "lodestar.services.cli", "health", "--server", f"127.0.0.1:{srv.port}"]

    def health(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *extra], capture_output=True, text=True, env=env, timeout=120)

    ok = health("--tls-ca", str(pki["ca"]), "--tls-server-name", "localhost")
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    wrong = health("--tls-ca", str(pki["ca"]), "--tls-server-name", "elsewhere.example")
    assert wrong.returncode == 1 and wrong.stdout.strip() == "UNAVAILABLE"
