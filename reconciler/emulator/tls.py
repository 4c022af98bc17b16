"""A throwaway certificate authority and a server certificate for the loopback emulator.

MSAL accepts only an https authority (msal/authority.py ``canonicalize``), so the tests that point MSAL
at the emulator over loopback serve it with TLS: this module makes a CA and a certificate for
``127.0.0.1`` / ``localhost`` signed by it, and the client trusts only that CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files written by :func:`make_test_ca`."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for a server socket presenting the certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_pem, self.key_pem)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` trusting only the throwaway CA (pass it as httpx ``verify``)."""
        return ssl.create_default_context(cafile=self.ca_pem)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_test_ca(directory: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1"),
                 days: int = 2) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server-key.pem`` into ``directory`` and return their paths.
    EC P-256 keys keep generation fast; the certificates are valid from an hour ago for ``days`` days."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("connref emulator test CA"))
        .issuer_name(_name("connref emulator test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    os.makedirs(directory, exist_ok=True)
    files = TlsFiles(os.path.join(directory, "ca.pem"), os.path.join(directory, "server.pem"),
                     os.path.join(directory, "server-key.pem"))
    _write(files.ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(files.cert_pem, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.key_pem, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a test's injected drop, a killed run) is normal here: say
        nothing. Anything else is a fault in the emulator and is printed as socketserver does."""
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return
        super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by the emulator app; keep test output clean."""


@dataclass
class TlsServer:
    """A WSGI app served over https on a loopback port (see :func:`serve_https`)."""

    base_url: str
    server: Any
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_https(
    app: Callable[..., Any], files: TlsFiles, host: str = "127.0.0.1", port: int = 0
) -> TlsServer:
    """Serve ``app`` over TLS on ``host:port`` (0 = any free port) in a background thread."""
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    ctx = files.server_context()
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.base_environ["wsgi.url_scheme"] = "https"
    server.base_environ["HTTPS"] = "on"
    thread = threading.Thread(target=server.serve_forever, name="emulator-https", daemon=True)
    thread.start()
    return TlsServer(f"https://{host}:{server.server_port}", server, thread)
