"""Real processes for the reliability tests: a private Redis, the Salesforce stand-in, Celery
workers and Celery beat, all started and stopped by the fixtures.

- Redis: our own ``redis-server`` on a spare port (never the shared one on 6379, so no one
  else's queued tasks reach our workers and a test may stop it). ``stop()``/``start()``
  bring it down and back on the same port.
- The stand-in runs in this process (a thread) and is a real HTTPS server, so workers in
  other processes reach it. It records every composite call: when it arrived, which
  contacts and Tasks it carried, and the answer.
- Workers and beat are ``celery -A config ...`` subprocesses, each in its own process group
  so ``kill()`` (SIGKILL to the group) takes the prefork children down with it. They use
  the test database (the tests are transactional, so they see committed rows).
- This process publishes to the private Redis too: see ``_point_celery_at``.

Every process is killed when the test ends, whatever happened; on failure the tail of each
log is printed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import kombu.pools
import pytest
from django.conf import settings as django_settings
from django.db import connection

from config.celery import app as celery_app
from integrations.salesforce.client import forget_sessions
from lib.channels import SALESFORCE_FIELDS
from preferences.models import (
    ChannelPreference,
    Contact,
    EmailCategory,
    Subscription,
)
from standins.salesforce import SalesforceStandIn
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")
STARTUP_TIMEOUT = 45.0  # two cores, several Django processes starting at once

# Short enough for the tests to see leases expire and retries happen within seconds.
SYNC_ENV = {
    "SYNC_CLAIM_LEASE_SECONDS": "5",
    "SYNC_RETRY_BASE_SECONDS": "1",
    "SYNC_RETRY_MAX_SECONDS": "8",
    "SYNC_PUSH_DELAY_SECONDS": "0",
    "SYNC_SWEEP_SECONDS": "1",
    "SYNC_PULL_SECONDS": "3600",  # tests that want the inbound pull ask for it
    "SYNC_PULL_LAG_SECONDS": "0",
}


# --- waiting -----------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.1,
) -> Any:
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds
    saying what was awaited (`what` may be a callable, to describe the state at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            pytest.fail(f"Timed out after {timeout:.0f} s waiting for: {description}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Redis -------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server without persistence: stopping it loses every queued message,
    which is what a broker outage can do."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self.ping, 10, lambda: f"redis-server on port {self.port} to answer PING")

    def ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"redis-server on port {self.port} exited: {_tail(self.log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (no shutdown save: nothing survives)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def queue_length(self, queue: str = "celery") -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(f"LLEN {queue}\r\n".encode())
            return int(sock.recv(64).decode().strip().lstrip(":"))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _point_celery_at(url: str) -> None:
    """Make this process publish to `url`.

    Changing settings.CELERY_BROKER_URL is not enough: the Celery app read the Django
    settings once, when its configuration was first used, so app.conf has to change. And
    the broker connections already made live on in kombu's process-wide pool registry
    (keyed by host and port) and in the app's cached producer pool; both are dropped so the
    next publish connects to the new URL.
    """
    celery_app.conf.broker_url = url  # finalises a still-pending configuration first
    kombu.pools.reset()
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")  # a cached_property, once used
    if amqp is not None:
        amqp._producer_pool = None


@pytest.fixture
def broker(private_redis: RedisServer) -> Iterator[RedisServer]:
    """The private Redis, with this process's Celery app publishing to it."""
    previous = celery_app.conf.broker_url
    _point_celery_at(private_redis.url)
    try:
        yield private_redis
    finally:
        _point_celery_at(previous)


# --- the Salesforce stand-in --------------------------------------------------------------


@dataclass(frozen=True)
class CompositeCall:
    at: float  # time.monotonic() when the stand-in received it
    contact_ids: tuple[str, ...]
    task_ids: tuple[str, ...]
    status: int  # the HTTP status it answered (0: the connection was dropped)
    done: float = 0.0  # time.monotonic() when it had been applied and answered
    versions: tuple[int | None, ...] = ()  # the contact versions it carried, in order
    answer: Any = None  # the composite response's body


class RecordingStandIn(SalesforceStandIn):
    """The stand-in, also recording each composite call and each query as it arrives."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.composites: list[CompositeCall] = []
        self.queries: list[float] = []
        self.first_composite_at: float | None = None
        self._recording = threading.Lock()

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Any:
        path = urlsplit(raw_path).path
        arrived = time.monotonic()
        if method == "POST" and path.endswith("/composite") and self.first_composite_at is None:
            self.first_composite_at = arrived
        reply = super().handle(method, raw_path, headers, body)
        if method == "POST" and path.endswith("/composite"):
            contacts, tasks = _composite_ids(body)
            call = CompositeCall(
                arrived,
                contacts,
                tasks,
                reply.status if reply else 0,
                done=time.monotonic(),
                versions=_composite_versions(body),
                answer=reply.body if reply else None,
            )
            with self._recording:
                self.composites.append(call)
        elif "/query" in path:
            with self._recording:
                self.queries.append(arrived)
        return reply

    def composite_calls(self) -> list[CompositeCall]:
        with self._recording:
            return sorted(self.composites, key=lambda call: call.at)

    def received_composites(self) -> int:
        """Composite calls that have arrived, including ones still being held."""
        return sum(1 for method, path in self.call_log if path.endswith("/composite"))

    def query_times(self) -> list[float]:
        with self._recording:
            return list(self.queries)


def _composite_versions(body: bytes) -> tuple[int | None, ...]:
    field = django_settings.SALESFORCE_VERSION_FIELD
    try:
        payload = json.loads(body)
    except ValueError:
        return ()
    return tuple(
        record.get(field)
        for sub in payload.get("compositeRequest", [])
        if sub.get("referenceId") == "contacts"
        for record in (sub.get("body") or {}).get("records", [])
    )


def _composite_ids(body: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        payload = json.loads(body)
    except ValueError:
        return (), ()
    contacts: list[str] = []
    tasks: list[str] = []
    external_id = django_settings.SALESFORCE_TASK_EXTERNAL_ID
    for sub in payload.get("compositeRequest", []):
        records = (sub.get("body") or {}).get("records", [])
        if sub.get("referenceId") == "contacts":
            contacts += [record.get("id") for record in records]
        else:
            tasks += [record.get(external_id) for record in records]
    return tuple(contacts), tuple(tasks)


@pytest.fixture
def standin(settings: Any) -> Iterator[RecordingStandIn]:
    """A running stand-in; this process's settings point at it too (the contact page, and
    any sync function a test calls in-process)."""
    forget_sessions()
    server = RecordingStandIn()
    server.start()
    settings.SALESFORCE_ENABLED = True
    settings.SALESFORCE_LOGIN_URL = server.url
    settings.SALESFORCE_CLIENT_ID = server.client_id
    settings.SALESFORCE_CLIENT_SECRET = server.client_secret
    settings.SALESFORCE_CA_BUNDLE = server.ca_path
    settings.SALESFORCE_TIMEOUT = 10
    for name, value in SYNC_ENV.items():
        setattr(settings, name, int(value))
    try:
        yield server
    finally:
        server.stop()
        forget_sessions()


# --- Celery processes --------------------------------------------------------------------


@dataclass
class CeleryProcess:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    ready_pattern: str
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)
    _ready_before: int = 0

    def launch(self) -> CeleryProcess:
        """Start the process without waiting for it to be ready (see wait_ready())."""
        assert not self.alive, f"{self.name} is already running"
        self._ready_before = self.log_text().count(self.ready_pattern)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill() reaches the children
        )
        return self

    def wait_ready(self) -> CeleryProcess:
        wait_for(
            lambda: (
                self._running() and self.log_text().count(self.ready_pattern) > self._ready_before
            ),
            STARTUP_TIMEOUT,
            lambda: f"{self.name} to be ready; its log ends:\n{_tail(self.log_path)}",
            interval=0.2,
        )
        return self

    def start(self) -> CeleryProcess:
        return self.launch().wait_ready()

    def _running(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited ({self.process.returncode}):\n{_tail(self.log_path)}")
        return True

    def kill(self) -> None:
        """SIGKILL to the whole process group: the main process and every pool child."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _database_url() -> str:
    """The test database, as the subprocesses must reach it."""
    db = connection.settings_dict
    user = quote(db.get("USER") or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{quote(db['NAME'], safe='')}"


def _celery_command() -> list[str]:
    script = Path(sys.executable).with_name("celery")
    return [str(script)] if script.exists() else [sys.executable, "-m", "celery"]


@dataclass
class CeleryProcesses:
    """Starts workers and beat against the private Redis, the stand-in and the test DB."""

    directory: Path
    redis: RedisServer
    standin: RecordingStandIn
    started: list[CeleryProcess] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def env(self, **overrides: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CELERY_", "TEST_CELERY_", "SALESFORCE_", "SYNC_", "ASCEND_"))
        }
        env = {
            **inherited,
            # The same settings module as this test run (pytest --ds may name another).
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": _database_url(),
            "CELERY_BROKER_URL": self.redis.url,
            # tests.settings drops CELERY_BROKER_URL from the environment and reads this one.
            "TEST_CELERY_BROKER_URL": self.redis.url,
            "SECRET_KEY": "reliability-tests-only-secret-key",
            "DEBUG": "false",
            "LOG_LEVEL": "INFO",
            "SALESFORCE_ENABLED": "true",
            "SALESFORCE_LOGIN_URL": self.standin.url,
            "SALESFORCE_CLIENT_ID": self.standin.client_id,
            "SALESFORCE_CLIENT_SECRET": self.standin.client_secret,
            "SALESFORCE_CA_BUNDLE": self.standin.ca_path,
            "SALESFORCE_TIMEOUT": "10",
            # Should the nightly job fall due mid-test, its file stays in the test's tmp dir.
            "ASCEND_DESTINATION": str(self.directory / "ascend"),
            "ASCEND_STAGING_DIR": str(self.directory / "ascend-staging"),
            **SYNC_ENV,
        }
        env.update(overrides)
        return env

    def worker(self, *, concurrency: int = 2, wait: bool = True, **env: str) -> CeleryProcess:
        number = next(self._numbers)
        name = f"worker{number}"
        command = [
            *_celery_command(),
            "-A",
            "config",
            "worker",
            "-Q",
            "celery",
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "-l",
            "info",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{name}@reliability",
        ]
        log_path = self.directory / f"{name}.log"
        process = CeleryProcess(name, command, self.env(**env), log_path, " ready.")
        return self._start(process, wait)

    def beat(self, *, wait: bool = True, **env: str) -> CeleryProcess:
        """Real celery beat with the project's schedule: the sweeper every
        SYNC_SWEEP_SECONDS (1 s here), the inbound pull every SYNC_PULL_SECONDS."""
        number = next(self._numbers)
        name = f"beat{number}"
        command = [
            *_celery_command(),
            "-A",
            "config",
            "beat",
            "-l",
            "info",
            "-s",
            str(self.directory / f"{name}-schedule"),
            "--pidfile",
            str(self.directory / f"{name}.pid"),
        ]
        log_path = self.directory / f"{name}.log"
        process = CeleryProcess(name, command, self.env(**env), log_path, "beat: Starting...")
        return self._start(process, wait)

    def _start(self, process: CeleryProcess, wait: bool) -> CeleryProcess:
        self.started.append(process)
        process.launch()
        return process.wait_ready() if wait else process

    def wait_ready(self) -> None:
        """Wait for every process launched with wait=False (they start in parallel)."""
        for process in self.started:
            if process.alive:
                process.wait_ready()

    def restart(self, process: CeleryProcess) -> CeleryProcess:
        process.kill()
        return process.start()

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()

    def logs(self) -> str:
        return "\n".join(
            f"----- {process.name} ({process.log_path}) -----\n{_tail(process.log_path, 60)}"
            for process in self.started
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def celery(
    request: pytest.FixtureRequest,
    transactional_db: None,
    broker: RedisServer,
    standin: RecordingStandIn,
    tmp_path: Path,
) -> Iterator[CeleryProcesses]:
    """Start workers and beat with ``celery.worker()`` / ``celery.beat()``; every one is
    killed when the test ends (before the test database is emptied)."""
    directory = tmp_path / "celery"
    directory.mkdir()
    processes = CeleryProcesses(directory, broker, standin)
    try:
        yield processes
    finally:
        processes.kill_all()
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(processes.logs(), file=sys.stderr)


# --- data --------------------------------------------------------------------------------


@pytest.fixture
def category_fields(transactional_db: None) -> dict[str, str]:
    """The email categories, as key -> Salesforce field."""
    return {c.key: c.salesforce_field for c in factories.make_categories()}


make_contacts = factories.make_contacts_in_step


def expected_salesforce_fields(contact_ids: list[int]) -> dict[int, dict[str, bool]]:
    """What each contact's Salesforce record must say, from the database (absolute values,
    every active category field)."""
    category_fields = dict(
        EmailCategory.objects.filter(is_active=True).values_list("key", "salesforce_field")
    )
    opted_out: dict[int, dict[str, bool]] = {pk: {} for pk in contact_ids}
    for pk, channel, value in ChannelPreference.objects.filter(
        contact_id__in=contact_ids
    ).values_list("contact_id", "channel", "opted_out"):
        opted_out[pk][channel] = value
    subscribed: dict[int, set[str]] = {pk: set() for pk in contact_ids}
    for pk, key in Subscription.objects.filter(contact_id__in=contact_ids).values_list(
        "contact_id", "category__key"
    ):
        subscribed[pk].add(key)
    return {
        pk: {
            **{
                name: opted_out[pk].get(channel, False)
                for channel, name in SALESFORCE_FIELDS.items()
            },
            **{name: key in subscribed[pk] for key, name in category_fields.items()},
        }
        for pk in contact_ids
    }


def standin_mismatches(standin: SalesforceStandIn, contacts: list[Contact]) -> list[str]:
    """Contacts whose Salesforce fields differ from the database (exact values: a field
    the stand-in does not have is None, which is neither True nor False)."""
    expected = expected_salesforce_fields([c.pk for c in contacts])
    remote = standin.contacts()
    mismatches = []
    for contact in contacts:
        record = remote.get(contact.salesforce_id, {})
        want = expected[contact.pk]
        have = {name: record.get(name) for name in want}
        if have != want:
            differing = {n: (have[n], want[n]) for n in want if have[n] is not want[n]}
            mismatches.append(f"{contact.salesforce_id} (stand-in, database): {differing}")
    return mismatches
