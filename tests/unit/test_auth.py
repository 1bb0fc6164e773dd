"""The scope table covers every RPC the services declare; the tokens file, its CLI and the TLS files
refuse what they cannot use with a message that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lodestar.bench.certs import CA
from lodestar.errors import AlreadyExists, InvalidInput, NotFound
from lodestar.services.auth import OPEN, SCOPE_OF, bearer, scope_for
from lodestar.services.cli import main
from lodestar.services.client.channel import Security
from lodestar.services.server import SERVICERS
from lodestar.services.tls import CertificateFiles
from lodestar.services.tokens import SCOPES, TokenFile, add_token, hash_token, read_tokens, revoke_token


def test_every_rpc_of_every_service_has_a_scope() -> None:
    """Walks the generated descriptors: an RPC added later without a line in SCOPE_OF fails here."""
    declared = {}
    for servicer in SERVICERS.values():
        service = servicer.SERVICE
        declared[service.full_name] = {m.name for m in service.methods}
        for method in service.methods:
            scope = scope_for(f"/{service.full_name}/{method.name}")
            assert scope in SCOPES, f"{service.full_name}/{method.name} has no scope in services/auth.py SCOPE_OF"
    assert {s: set(m) for s, m in SCOPE_OF.items()} == declared  # and no scope for an RPC that is gone


def test_scopes_as_the_issue_lists_them() -> None:
    assert scope_for("/lodestar.retrieve.v1.RetrieveService/DropCollection") == "admin"
    assert scope_for("/lodestar.retrieve.v1.RetrieveService/Upsert") == "write"
    assert scope_for("/lodestar.index.v1.IndexService/CommitChunk") == "worker"
    assert scope_for("/lodestar.generate.v1.GenerateService/Answer") == "read"
    assert scope_for("/grpc.health.v1.Health/Check") == OPEN
    assert scope_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == OPEN
    assert scope_for("/lodestar.embed.v1.EmbedService/NotThere") is None


def test_bearer_metadata() -> None:
    assert bearer((("authorization", "Bearer abc"),)) == "abc"
    assert bearer((("authorization", "bearer  abc "),)) == "abc"
    assert bearer((("authorization", "Basic abc"),)) is None
    assert bearer((("x-other", "Bearer abc"),)) is None
    assert bearer(None) is None


def test_tokens_file_keeps_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = add_token(path, "app", "read,write")
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    (entry,) = read_tokens(path)
    assert entry.name == "app" and entry.scopes == {"read", "write"}
    assert TokenFile(path).identify(token) == entry
    assert TokenFile(path).identify(token + "x") is None
    with pytest.raises(AlreadyExists):
        add_token(path, "app", "read")
    with pytest.raises(InvalidInput, match="scopes must be some of read, write, admin, worker"):
        add_token(path, "other", "read,root")
    revoke_token(path, "app")
    assert read_tokens(path) == []
    with pytest.raises(NotFound, match="no token named 'app'"):
        revoke_token(path, "app")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{}", "expected a JSON list"),
        ("[{", "not readable JSON"),
        ('[{"name": "a", "sha256": "xyz", "scopes": ["read"]}]', "64 hex digits"),
        ('[{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["sudo"]}]', "scopes must be some of"),
        ('[{"name": "a", "scopes": ["read"]}]', "needs name, sha256 and scopes"),
    ],
)
def test_a_bad_tokens_file_is_refused_naming_the_fault(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        TokenFile(path)


def test_a_broken_rewrite_keeps_the_last_good_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lodestar.services import tokens

    monkeypatch.setattr(tokens, "RECHECK_S", 0.0)
    path = tmp_path / "tokens.json"
    token = add_token(path, "app", "read")
    file = TokenFile(path)
    path.write_text("[{ half written")
    assert file.identify(token) is not None
    path.write_text("[]")  # a good rewrite without it: revoked
    assert file.identify(token) is None


def test_token_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "tokens.json")
    assert main(["token", "create", "--name", "app", "--scopes", "read,write", "--file", path]) == 0
    token = capsys.readouterr().out.splitlines()[0]
    assert token.startswith("lst_") and token not in Path(path).read_text()
    assert main(["token", "list", "--file", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "app", "scopes": ["read", "write"]}]
    assert main(["token", "create", "app", "--file", path]) == 2
    assert "already" in capsys.readouterr().err
    assert main(["token", "revoke", "app", "--file", path]) == 0
    assert main(["token", "create", "--file", path]) == 2


def test_secrets_stay_out_of_config_show(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LODESTAR_TOKEN", "lst_secret-client-token")
    monkeypatch.setenv("LODESTAR_WORKER_TOKEN", "lst_secret-worker-token")
    assert main(["config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert "secret" not in out and json.loads(out)["token"] == "**********"
    assert "lst_secret" not in repr(Security.of(token="lst_secret-client-token"))


def test_tls_files_must_match(tmp_path: Path) -> None:
    ca = CA()
    cert, _ = ca.issue("one", server=True).write(tmp_path, "one")
    _, other_key = ca.issue("two", server=True).write(tmp_path, "two")
    with pytest.raises(InvalidInput, match="TLS: cannot use"):
        CertificateFiles(cert, other_key)
    with pytest.raises(ValueError, match="give cert and key together"):
        Security.of(cert=cert)
