"""A throwaway certificate authority for TLS tests: a CA, a server certificate for 127.0.0.1
and a client certificate whose key is encrypted, made with the ``openssl`` command.

Elliptic-curve keys (P-256) keep generation well under a second.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

CA_NAME = "pushflow-test-ca"
CLIENT_NAME = "pushflow-test-client"
KEY_PASSWORD = "k3y-Pa55word-do-not-log"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    client_key_plain: Path  # the same key, unencrypted


def make_pki(directory: Path) -> Pki | None:
    """Certificates in ``directory``; None when no ``openssl`` command is installed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60,
                       cwd=directory)

    run("req", "-x509", *_EC, "-nodes", "-days", "1", "-subj", f"/CN={CA_NAME}",
        "-keyout", "ca.key", "-out", "ca.pem")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-new", *_EC, "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "server.ext", "-out", "server.pem")
    run("req", "-new", *_EC, "-passout", f"pass:{KEY_PASSWORD}", "-subj", f"/CN={CLIENT_NAME}",
        "-keyout", "client.key", "-out", "client.csr")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "client.pem")
    run("pkey", "-in", "client.key", "-passin", f"pass:{KEY_PASSWORD}", "-out",
        "client-plain.key")
    return Pki(ca=directory / "ca.pem", server_cert=directory / "server.pem",
               server_key=directory / "server.key", client_cert=directory / "client.pem",
               client_key=directory / "client.key",
               client_key_plain=directory / "client-plain.key")


class ClientCertificateServer:
    """A TLS server on 127.0.0.1 that requires a client certificate signed by the test CA
    and reports, per connection, the common name the client presented (or the error)."""

    def __init__(self, pki: Pki) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(pki.server_cert, pki.server_key)
        self._context.load_verify_locations(pki.ca)
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.presented: Queue[str | Exception] = Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            try:
                with self._context.wrap_socket(connection, server_side=True) as tls:
                    self.presented.put(_common_name(tls.getpeercert() or {}))
            except (OSError, ValueError) as exc:  # ssl.SSLError included
                self.presented.put(exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()

    def __enter__(self) -> ClientCertificateServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _common_name(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
