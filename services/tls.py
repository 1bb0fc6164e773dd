"""TLS on the gRPC port from certificate files that may be replaced while the server runs.

gRPC asks `CertificateFiles.fetch` for the configuration at each new handshake; it answers None
(keep the current one) until a file's identity (inode, size, mtime) changes, which is what
cert-manager and Kubernetes secret volumes do when they rotate a certificate (they swap a symlink
or rewrite the file). A new pair is only taken once the key matches the certificate, so a
half-written rotation keeps the previous certificate serving. Connections already open keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

from lodestar.errors import InvalidInput

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int], ...]


class CertificateFiles:
    """The server's certificate chain, key and (mTLS) client CA bundle, read again when they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), Path(client_ca) if client_ca else None
        self._lock = threading.Lock()
        self._seen: Signature | None = None  # the files' identity when last read (taken or refused)
        self.loads = 0  # configurations built (1 at start-up, +1 per rotation taken)
        try:
            self._seen = self._signature()
            self.initial = self._configuration()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise InvalidInput(f"TLS: cannot use {self.cert} and {self.key}: {exc}") from None

    def _paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def _signature(self) -> Signature:
        out = []
        for p in self._paths():
            st = os.stat(p)  # follows symlinks: a swapped ..data link changes the target's inode
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _read(self) -> list[bytes]:
        return [p.read_bytes() for p in self._paths()]

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files: the key must match the certificate, the CA bundle must parse."""
        before = self._read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)  # raises when the key is not the certificate's
        if self.client_ca is not None:
            context.load_verify_locations(cafile=str(self.client_ca))
        if self._read() != before:  # replaced while checking: try again at the next handshake
            raise ValueError("the files changed while they were read")
        cert, key, *ca = before
        self.loads += 1
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca[0] if ca else None)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake question: a new configuration when the files changed, else None."""
        with self._lock:
            try:
                signature = self._signature()
            except OSError:  # mid-rotation (a file briefly missing): keep serving the current one
                return None
            if signature == self._seen:
                return None
            self._seen = signature
            try:
                config = self._configuration()
            except (OSError, ValueError, ssl.SSLError) as exc:  # looked at again when a file changes again
                log.warning("TLS: the new certificate files are not usable yet (%s); keeping the previous ones", exc)
                return None
            log.info("TLS: certificate files changed; new handshakes use the new certificate (%s)", self.cert)
            return config


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Credentials that follow `files`; with a client CA, a client must present a certificate it signed."""
    return grpc.dynamic_ssl_server_credentials(
        files.initial,
        files.fetch,  # type: ignore[arg-type]  # gRPC documents None as "no change"; its stubs do not
        require_client_authentication=files.client_ca is not None,
    )
