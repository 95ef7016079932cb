"""HTTPS for the stand-ins: a generated CA and server certificate, and a threading server.

Shared by the Salesforce and Marketing Cloud stand-ins, so both are reached the way the real
services are (verified TLS), each with its own CA.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)


def ensure_certificates(
    directory: Path, *, ca_name: str = "Preference Desk stand-in CA"
) -> tuple[Path, Path, Path]:
    """A CA (``ca.pem``) and a server certificate it signed, for 127.0.0.1 and localhost.

    Kept in ``directory`` and reused while valid, so a demo's CA bundle path survives a
    restart. The CA key is never written: nothing else can be signed with it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    now = datetime.now(UTC)
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if current.not_valid_after_utc > now + timedelta(days=1):
            return ca_path, cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=397))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


class TLSServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer speaking TLS, whose ``close_connections()`` makes stop prompt."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ) -> None:
        self.context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        # The TLS handshake happens in the handler's thread, so one slow or hostile client
        # cannot stall the accept loop.
        sock, address = self.socket.accept()
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that distrust the certificate or give up on a held request end here.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def track(self, sock: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(sock)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise hold their threads until the client
        # goes away; stop() must be prompt.
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class TLSRequestHandler(BaseHTTPRequestHandler):
    """Completes the handshake in its own thread and keeps connections alive."""

    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session expects
    timeout = 30.0
    server: TLSServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.server.track(self.request)
        try:
            self.request.do_handshake()
        except BaseException:
            self.server.untrack(self.request)
            raise
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class StandIn:
    """The lifecycle both stand-ins share: certificates, the server thread, and the state
    file saved in the background (the demo's stand-ins keep their data across restarts).

    A subclass sets the attributes below in its __init__ and implements _server and _save.
    """

    name: ClassVar[str]  # names the server thread and the temporary certificate directory
    ca_name: ClassVar[str]

    host: str
    port: int
    ca_path: str
    _url: str
    _state_file: Path | None
    _cert_dir: Path | None
    _own_cert_dir: Path | None
    _stopping: threading.Event
    _dirty: threading.Event
    _httpd: TLSServer | None
    _threads: list[threading.Thread]
    _more_httpds: list[TLSServer]

    def _server(self, address: tuple[str, int], context: ssl.SSLContext) -> TLSServer:
        raise NotImplementedError

    def _more_servers(self, context: ssl.SSLContext) -> list[TLSServer]:
        """Listeners a stand-in serves besides its own URL (another host of the same
        service), started and stopped with it; none by default."""
        return []

    def _save(self, path: Path) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("the stand-in is not started")
        return self._url

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        cert_dir = self._cert_dir
        if cert_dir is None:
            cert_dir = self._own_cert_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        ca_path, cert_path, key_path = ensure_certificates(cert_dir, ca_name=self.ca_name)
        self.ca_path = str(ca_path)
        self._stopping.clear()
        context = server_context(cert_path, key_path)
        self._httpd = self._server((self.host, self.port), context)
        self.port = self._httpd.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"https://{host}:{self.port}"
        serve = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-{self.port}",
            daemon=True,
        )
        serve.start()
        self._threads = [serve]
        self._more_httpds = self._more_servers(context)
        for server in self._more_httpds:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self.name}-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        if self._state_file is not None:
            saver = threading.Thread(target=self._save_loop, name=f"{self.name}-saver", daemon=True)
            saver.start()
            self._threads.append(saver)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # releases requests held by latency/timeout faults
        for server in (self._httpd, *self._more_httpds):
            server.shutdown()
            server.close_connections()
            server.server_close()
        self._more_httpds = []
        for thread in self._threads:
            thread.join(timeout=5)
        self._httpd = None
        if self._state_file is not None:
            self._save(self._state_file)
        if self._own_cert_dir is not None:
            shutil.rmtree(self._own_cert_dir, ignore_errors=True)
            self._own_cert_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _save_loop(self) -> None:
        while not self._stopping.is_set():
            if self._dirty.wait(0.5) and not self._stopping.is_set():
                self._stopping.wait(0.2)  # gather a burst of writes into one save
                assert self._state_file is not None
                self._save(self._state_file)


@contextmanager
def run_standin_process(
    module: str,
    *,
    label: str,
    env_name: str,
    clear_env: Iterable[str] = (),
    port: int = 0,
    args: Iterable[str] = (),
    startup_timeout: float = 20.0,
) -> Iterator[tuple[dict[str, Any], str]]:
    """Run ``python -m <module>`` and yield (the JSON line it printed on start, its secret).

    The client secret is passed in the environment variable env_name, not on the command
    line (which any local user can read).
    """
    secret = secrets.token_urlsafe(24)
    env = {**os.environ, env_name: secret}
    for name in clear_env:
        env.pop(name, None)
    command = [sys.executable, "-m", module, "--port", str(port), *args]
    process = subprocess.Popen(  # noqa: S603 (our own module, no shell)
        command,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        stdout = process.stdout
        assert stdout is not None
        lines: list[str] = []
        # readline() would block forever on a child that hangs before printing.
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(startup_timeout)
        if not lines or not lines[0].strip():
            raise RuntimeError(f"the {label} stand-in did not start (exit {process.poll()})")
        yield json.loads(lines[0]), secret
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
