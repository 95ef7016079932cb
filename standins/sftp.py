"""A stand-in for Ascend's SFTP drop box: a real SSH/SFTP server on loopback.

Built on paramiko's server side (the project already pins paramiko for the client), so it
needs no system package, no root and no sshd configuration, starts in milliseconds on a
spare port, and runs the same on a developer's laptop and in CI. It speaks SSH-2 and SFTP
version 3 with the ``posix-rename@openssh.com`` extension, like OpenSSH, and serves one
local directory as ``/``. Keys are Ed25519: a host key (clients verify it, as the app
must) and one authorised client key; a password may be allowed too.

Two ways to run it:

- in-process: ``with running_sftp_standin(root) as server: ...`` (wrap in a pytest
  fixture); ``server.url``, ``server.host_key`` and ``server.client_key_path`` are what the
  app's ``ASCEND_DESTINATION``, ``ASCEND_SFTP_HOST_KEY`` and ``ASCEND_SFTP_KEY_FILE`` take;
- standalone for the demo:
  ``python -m standins.sftp --port 2222 --root .data/ascend-sftp`` prints those settings.

It can be told to fail (``fail("write" | "rename" | "disconnect")``) the way a full disk, a
permissions mistake or a dropped connection would.
"""

from __future__ import annotations

import argparse
import errno
import hmac
import logging
import os
import posixpath
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from standins.common.faults import FaultBook, FaultRule

logger = logging.getLogger(__name__)

DEFAULT_USERNAME = "ascend"
HOST_KEY_FILE = "host_ed25519"
CLIENT_KEY_FILE = "client_ed25519"
Fault = Literal["write", "rename", "disconnect"]
FAULTS: tuple[Fault, ...] = ("write", "rename", "disconnect")


def ensure_key(path: Path) -> paramiko.Ed25519Key:
    """Load the Ed25519 private key at path, creating it (mode 0600) if it is missing.

    paramiko cannot generate Ed25519 keys, so cryptography does; OpenSSH's format keeps
    the file usable by ``ssh``/``sftp`` too.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        key = paramiko.Ed25519Key.from_private_key_file(str(path))
        path.with_name(path.name + ".pub").write_text(public_key_line(key) + "\n")
        return key
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def public_key_line(key: paramiko.PKey) -> str:
    """The key as OpenSSH writes it: ``ssh-ed25519 AAAA...``."""
    return f"{key.get_name()} {key.get_base64()}"


class _Auth(paramiko.ServerInterface):
    """Who may sign in: one user, with the authorised key or (if set) the password."""

    def __init__(self, standin: SftpStandIn, transport: paramiko.Transport) -> None:
        self.standin = standin
        self.transport = transport

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password" if self.standin.password else "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.standin.username and key.asbytes() == self.standin.client_key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        expected = self.standin.password
        if (
            expected
            and username == self.standin.username
            and hmac.compare_digest(password.encode(), expected.encode())
        ):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Handle(paramiko.SFTPHandle):
    def __init__(self, flags: int, file: Any, local: Path, sftp: _Directory) -> None:
        super().__init__(flags)
        self.readfile = file
        self.writefile = file
        self.filename = str(local)
        self._sftp = sftp

    def write(self, offset: int, data: bytes) -> int:
        if self._sftp.standin.take_fault("disconnect"):
            # A connection lost mid-upload: the client is left with a partial file.
            super().write(offset, data[: len(data) // 2])
            self._sftp.auth.transport.close()
            return paramiko.SFTP_FAILURE
        return int(super().write(offset, data))

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        try:
            paramiko.SFTPServer.set_file_attr(self.filename, attr)
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)
        return paramiko.SFTP_OK


class _Directory(paramiko.SFTPServerInterface):
    """The SFTP operations, on the stand-in's root directory (seen as ``/``)."""

    def __init__(self, server: _Auth, standin: SftpStandIn) -> None:
        super().__init__(server)
        self.auth = server
        self.standin = standin

    def _local(self, path: str) -> Path:
        # normpath of an absolute path drops every "..", so nothing outside root is reachable
        # (symlinks cannot be made: symlink() stays unsupported).
        return self.standin.root / posixpath.normpath("/" + path).lstrip("/")

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> _Handle | int:
        local = self._local(path)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writing and self.standin.take_fault("write"):
            return paramiko.SFTP_PERMISSION_DENIED
        mode = getattr(attr, "st_mode", None) or 0o644
        try:
            fd = os.open(local, flags | getattr(os, "O_BINARY", 0), mode)
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)
        if flags & os.O_WRONLY:
            fmode = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            fmode = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            fmode = "rb"
        return _Handle(flags, os.fdopen(fd, fmode), local, self)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        local = self._local(path)
        try:
            entries = []
            for name in sorted(os.listdir(local)):
                attr = paramiko.SFTPAttributes.from_stat(os.lstat(local / name))
                attr.filename = name
                entries.append(attr)
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)
        return entries

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.lstat(self._local(path)))
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)

    def remove(self, path: str) -> int:
        return self._call(os.remove, self._local(path))

    def rename(self, oldpath: str, newpath: str) -> int:
        # SFTP v3 rename refuses to overwrite; posix_rename (the extension) replaces.
        if self.standin.take_fault("rename"):
            return paramiko.SFTP_FAILURE
        target = self._local(newpath)
        if target.exists():
            return paramiko.SFTPServer.convert_errno(errno.EEXIST)
        return self._call(os.rename, self._local(oldpath), target)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        if self.standin.take_fault("rename"):
            return paramiko.SFTP_FAILURE
        return self._call(os.replace, self._local(oldpath), self._local(newpath))

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._call(os.mkdir, self._local(path), getattr(attr, "st_mode", None) or 0o755)

    def rmdir(self, path: str) -> int:
        return self._call(os.rmdir, self._local(path))

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._call(paramiko.SFTPServer.set_file_attr, str(self._local(path)), attr)

    @staticmethod
    def _call(function: Any, *args: Any) -> int:
        try:
            function(*args)
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno)
        return paramiko.SFTP_OK


class SftpStandIn:
    """Ascend's drop box: one user, one directory, SFTP on loopback. Thread-safe."""

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = DEFAULT_USERNAME,
        password: str = "",
        key_dir: str | Path | None = None,
    ) -> None:
        """``key_dir`` keeps the host and client keys across restarts (the demo); without it
        fresh keys are made in a temporary directory, removed by ``stop()``."""
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self._own_key_dir = key_dir is None
        self.key_dir = Path(key_dir) if key_dir else Path(tempfile.mkdtemp(prefix="sftp-standin-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_private_key = ensure_key(self.key_dir / HOST_KEY_FILE)
        self.client_key_path = self.key_dir / CLIENT_KEY_FILE
        self.client_key = ensure_key(self.client_key_path)
        self.logins = 0
        self._faults = FaultBook(FaultRule, FAULTS)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._transports: list[paramiko.Transport] = []

    @property
    def host_key(self) -> str:
        """The public host key, as ``ASCEND_SFTP_HOST_KEY`` takes it."""
        return public_key_line(self.host_private_key)

    @property
    def url(self) -> str:
        return self.url_for("/")

    def url_for(self, directory: str) -> str:
        if self._listener is None:
            raise RuntimeError("the stand-in is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sftp://{self.username}@{host}:{self.port}/{directory.lstrip('/')}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SftpStandIn:
        if self._listener is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"sftp-standin-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._listener is None:
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        self._listener = None
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(timeout=5)
        if self._own_key_dir:
            shutil.rmtree(self.key_dir, ignore_errors=True)

    def __enter__(self) -> SftpStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------

    def fail(self, kind: Fault, times: int = 1) -> None:
        """Make the next ``times`` operations of this kind fail: ``write`` (opening a file
        for writing is refused), ``rename`` (fails), ``disconnect`` (the connection drops
        half-way through a write)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        self._faults.add(kind, times=times)

    def clear_faults(self) -> None:
        self._faults.clear()

    def take_fault(self, kind: Fault) -> bool:
        # SFTP operations have no path worth matching: a rule of the kind is enough.
        return self._faults.take((kind,), "") is not None

    # -- serving -----------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            # Polling keeps stop() simple: closing a socket does not wake accept() everywhere.
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            try:
                self._start_session(sock)
            except Exception:
                logger.exception("SFTP stand-in: could not start a session")
                sock.close()

    def _start_session(self, sock: socket.socket) -> None:
        transport = paramiko.Transport(sock)
        transport.add_server_key(self.host_private_key)
        transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Directory, self)
        with self._lock:
            self._transports = [t for t in self._transports if t.is_active()]
            self._transports.append(transport)
            self.logins += 1
        # Runs the handshake in the transport's own thread; a client that fails host key
        # verification or authentication simply disconnects.
        transport.start_server(server=_Auth(self, transport))


@contextmanager
def running_sftp_standin(root: str | Path, **options: Any) -> Iterator[SftpStandIn]:
    """A started stand-in for the duration of a ``with`` block (wrap in a pytest fixture)."""
    standin = SftpStandIn(root, **options)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.sftp",
        description="Run the Ascend SFTP drop box stand-in on loopback until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2222)
    parser.add_argument("--root", default=".data/ascend-sftp", help="the directory served as /")
    parser.add_argument(
        "--key-dir", help="where the host and client keys live (default: <root>-keys beside it)"
    )
    parser.add_argument("--user", default=DEFAULT_USERNAME)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    root = Path(args.root).resolve()
    # Keys stay outside the served directory, so no client can download them.
    key_dir = Path(args.key_dir) if args.key_dir else root.with_name(root.name + "-keys")
    # A password comes from the environment only (a command line is visible to every user);
    # ASCEND_SFTP_PASSWORD is the name the app reads too.
    standin = SftpStandIn(
        root,
        host=args.host,
        port=args.port,
        username=args.user,
        password=os.environ.get("ASCEND_SFTP_PASSWORD", ""),
        key_dir=key_dir,
    )
    standin.start()
    print(
        f"ASCEND_DESTINATION={standin.url}\n"
        f"ASCEND_SFTP_KEY_FILE={standin.client_key_path.resolve()}\n"
        f"ASCEND_SFTP_HOST_KEY='{standin.host_key}'",
        flush=True,
    )
    print(f"SFTP stand-in serving {root} on port {standin.port}", file=sys.stderr, flush=True)

    stopped = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with suppress(KeyboardInterrupt):
        stopped.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
