"""The Ascend connector: delivering a finished file to Ascend's drop box, a directory or an
SFTP server (``ASCEND_DESTINATION``), all of it under its final name or nothing.

Ascend takes files, not API calls. A file is delivered the way it was written: under a
temporary name, then renamed, so Ascend never reads a partial file. Like every connector it
knows nothing of the app's models: sync.py beside it builds the file.
"""

from __future__ import annotations

import base64
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paramiko
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TEMP_GLOB = ".ascend-changes-*.part"


class AscendExportError(Exception):
    """The file was not delivered; the run records why. The message is for the system team."""


def fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable, not only the file's contents.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: Path) -> None:
    # A process killed mid-write leaves its temporary file; exports are serialised by
    # their own lock, so any such file now belongs to no one.
    if directory.is_dir():
        for stale in directory.glob(TEMP_GLOB):
            stale.unlink(missing_ok=True)


# --- delivery --------------------------------------------------------------------------------


class Destination(Protocol):
    def describe(self, filename: str) -> str:
        """Where the file lands, without secrets (recorded on the run and in the audit log)."""
        ...

    def deliver(self, staged: Path) -> None:
        """Put the staged file there: all of it under its name, or nothing."""
        ...

    def fetch_newest(self, pattern: str, into: Path) -> Path | None:
        """A local copy of the newest file there whose name matches (the names carry the
        date, so the last in name order), or None; `into` is a directory for the copy."""
        ...


@dataclass(frozen=True)
class DirectoryDestination:
    directory: Path

    def describe(self, filename: str) -> str:
        return str(self.directory / filename)

    def deliver(self, staged: Path) -> None:
        # Not created if missing: an unmounted share must fail, not fill the local disk.
        if not self.directory.is_dir():
            raise AscendExportError(f"{self.directory} is not a directory")
        remove_stale_temp_files(self.directory)
        fd, temp_name = tempfile.mkstemp(
            dir=self.directory, prefix=f".{staged.name}.", suffix=".part"
        )
        temp = Path(temp_name)
        try:
            with staged.open("rb") as source, os.fdopen(fd, "wb") as target:
                shutil.copyfileobj(source, target)
                target.flush()
                os.fsync(target.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, self.directory / staged.name)
            fsync_directory(self.directory)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def fetch_newest(self, pattern: str, into: Path) -> Path | None:
        if not self.directory.is_dir():
            raise AscendExportError(f"{self.directory} is not a directory")
        names = sorted(path.name for path in self.directory.glob(pattern))
        return self.directory / names[-1] if names else None


@dataclass(frozen=True)
class SftpDestination:
    host: str
    port: int
    username: str
    directory: str  # absolute, or relative to the login directory
    host_keys: tuple[Any, ...]  # paramiko.PKey
    key_file: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0

    def describe(self, filename: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = posixpath.normpath(posixpath.join(self.directory, filename))
        return f"sftp://{self.username}@{host}:{self.port}{'' if path[0] == '/' else '/~/'}{path}"

    @contextmanager
    def _sftp(self) -> Iterator[paramiko.SFTPClient]:
        client = paramiko.SSHClient()
        # Only the configured host key is trusted: an unknown or different key is refused,
        # never learnt (no AutoAddPolicy, no ~/.ssh/known_hosts).
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        known_as = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        for key in self.host_keys:
            client.get_host_keys().add(known_as, key.get_name(), key)
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.username,
                key_filename=self.key_file or None,
                password=self.password or None,
                look_for_keys=False,
                allow_agent=False,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                channel_timeout=self.timeout,
            )
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout)
            yield sftp
        finally:
            client.close()

    def deliver(self, staged: Path) -> None:
        remote = posixpath.join(self.directory, staged.name)
        temp = posixpath.join(self.directory, f".{staged.name}.part")
        with self._sftp() as sftp:
            # A connection lost mid-upload leaves a temporary file the client could not
            # remove; exports are serialised by their own lock, so any such file is stale. Some
            # drop boxes do not allow listing: then there is nothing to sweep.
            with suppress(OSError):
                for name in sftp.listdir(self.directory):
                    if fnmatch(name, TEMP_GLOB):
                        sftp.remove(posixpath.join(self.directory, name))
            try:
                sftp.put(str(staged), temp, confirm=True)  # confirm: compares the size
                # Atomic replace on the server (OpenSSH's extension): a re-run overwrites the
                # night's file in one step, and Ascend never sees it half-written.
                sftp.posix_rename(temp, remote)
            except BaseException:
                with suppress(Exception):
                    sftp.remove(temp)
                raise

    def fetch_newest(self, pattern: str, into: Path) -> Path | None:
        with self._sftp() as sftp:
            names = sorted(name for name in sftp.listdir(self.directory) if fnmatch(name, pattern))
            if not names:
                return None
            local = into / names[-1]
            sftp.get(posixpath.join(self.directory, names[-1]), str(local))
            return local


def _host_keys(value: str) -> tuple[Any, ...]:
    """Parse ``ssh-ed25519 AAAA...`` lines (a known_hosts line, host first, also works)."""
    keys = []
    for line in value.strip().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        # A key's base64 always starts with AAAA (its type's length); anything before the
        # type is a known_hosts host pattern.
        if len(parts) >= 3 and not parts[1].startswith("AAAA") and parts[2].startswith("AAAA"):
            parts = parts[1:]
        try:
            keys.append(
                paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1], validate=True))
            )
        except Exception as error:
            raise ImproperlyConfigured(
                "ASCEND_SFTP_HOST_KEY must be the server's public host key, like "
                f"'ssh-ed25519 AAAA...' ({error.__class__.__name__})"
            ) from None
    if not keys:
        raise ImproperlyConfigured(
            "ASCEND_SFTP_HOST_KEY is required for SFTP: the server's public host key, like "
            "'ssh-ed25519 AAAA...' (ssh-keyscan, or the server's /etc/ssh/ssh_host_*.pub)"
        )
    return tuple(keys)


def destination() -> Destination:
    """Where files go, from ``ASCEND_DESTINATION``: a directory, or an sftp:// URL."""
    value = str(getattr(settings, "ASCEND_DESTINATION", "")).strip()
    if not value:
        raise ImproperlyConfigured(
            "ASCEND_DESTINATION is not set: a directory, or sftp://user@host:port/directory"
        )
    if not value.startswith("sftp://"):
        return DirectoryDestination(Path(value))
    url = urlsplit(value)
    if url.password is not None:
        raise ImproperlyConfigured(
            "Put the SFTP password in ASCEND_SFTP_PASSWORD, not in ASCEND_DESTINATION"
        )
    if not url.hostname or not url.username:
        raise ImproperlyConfigured("ASCEND_DESTINATION must look like sftp://user@host/directory")
    try:
        port = url.port or 22
    except ValueError:
        raise ImproperlyConfigured("ASCEND_DESTINATION has an invalid port") from None
    key_file = str(getattr(settings, "ASCEND_SFTP_KEY_FILE", ""))
    password = str(getattr(settings, "ASCEND_SFTP_PASSWORD", ""))
    if not key_file and not password:
        raise ImproperlyConfigured(
            "SFTP needs ASCEND_SFTP_KEY_FILE (a private key file) or ASCEND_SFTP_PASSWORD"
        )
    # As in sftp:// URLs elsewhere: /~/dir is relative to the login directory.
    path = unquote(url.path) or "/"
    directory = (path[3:] or ".") if path.startswith("/~/") or path == "/~" else path
    return SftpDestination(
        host=url.hostname,
        port=port,
        username=unquote(url.username),
        directory=directory,
        host_keys=_host_keys(str(getattr(settings, "ASCEND_SFTP_HOST_KEY", ""))),
        key_file=key_file,
        password=password,
        timeout=float(getattr(settings, "ASCEND_SFTP_TIMEOUT", 30.0)),
    )
