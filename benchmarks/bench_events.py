"""Benchmark: signed email-platform events posted to a running app (docs/design.md, "Events
from email platforms").

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_bench_events \\
        .venv/bin/python benchmarks/bench_events.py [--events 10000]

What it does:

1. Drops and creates the database (its name must contain "bench"), migrates it and creates
   one contact per event.
2. Starts a Redis of its own on a spare port, gunicorn (2 workers) and a Celery worker
   (concurrency 2) against them, as production runs.
3. Posts --events signed webhook events, one request each, from one client on a kept-alive
   connection: each a different contact, the kinds mixed (unsubscribe, spam report, group
   and client opt-out, send-account opt-out, hard and soft bounce); every 20th event is
   posted a second time (platforms deliver at least once). Each answer's time is measured.
4. Waits until the worker has applied every stored event, then checks from the database:
   every event sent is stored once (lost: sent and not stored; duplicated: an event id
   with more than one audit entry), and each one changed its contact exactly once.

Targets: answer p95 <= 20 ms; all applied within 60 s of the last answer (the events are
posted as fast as one client can, so the worker works through a backlog that builds while
they arrive). The last line is
``BENCH events n=N answer_p95_ms=X applied_seconds=S lost=L duplicated=D``; exit status 0
when both targets are met with nothing lost or duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_bench_events"
PLATFORM = "bench"
SECRET = "bench-webhook-secret"  # noqa: S105 (a throwaway database's webhook)
KINDS = [
    "unsubscribe",
    "spam_report",
    "group_opt_out",
    "client_opt_out",
    "sender_opt_out",
    "hard_bounce",
    "soft_bounce",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--resend-every", type=int, default=20)
    parser.add_argument("--p95-target-ms", type=float, default=20.0)
    parser.add_argument("--applied-target-seconds", type=float, default=60.0)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure(database_url: str) -> dict[str, str]:
    import dj_database_url

    name = str(dj_database_url.parse(database_url)["NAME"])
    if "bench" not in name or name.startswith("test"):
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret-key"),
        "DEBUG": "false",
        "SECURE_COOKIES": "false",
        "EVENT_WEBHOOK_SECRETS": f"{PLATFORM}={SECRET}",
        "SALESFORCE_ENABLED": "false",
        "MARKETING_CLOUD_ENABLED": "false",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(ROOT),
    }


def prepare_database(env: dict[str, str], contacts: int) -> None:
    import psycopg

    url = env["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cursor,
        cursor.copy(
            "COPY preferences_contact (first_name, last_name, email, phone, salesforce_id, "
            "ascend_id, country, email_bounced, version, created_at) FROM STDIN"
        ) as copy,
    ):
        now = datetime.now(UTC)
        for n in range(contacts):
            copy.write_row(
                (
                    "Bench",
                    f"Person {n}",
                    f"person{n}@bench.example.edu",
                    "",
                    f"003BENCH{n:010d}",
                    f"9{n:09d}",
                    "US",
                    False,
                    0,
                    now,
                )
            )
    print(f"Database {name}: migrated, {contacts:,} contacts", flush=True)


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{log.name} exited: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}: {log.read_text(errors='replace')[-2000:]}")


def wait_for_worker(log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if "ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise SystemExit(f"the worker did not start: {log.read_text(errors='replace')[-2000:]}")


def event(n: int) -> dict[str, Any]:
    kind = KINDS[n % len(KINDS)]
    found: dict[str, Any] = {
        "id": f"bench-{n}",
        "type": kind,
        "email": f"person{n}@bench.example.edu",
        "subscriber_key": f"003BENCH{n:010d}",
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": f"bench event {n}",
    }
    if kind == "sender_opt_out":
        found["send_account"] = f"alumni-news-{n % 7}"
    return found


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-PD-Timestamp": stamp,
        "X-PD-Signature": f"sha256={digest.hexdigest()}",
    }


def post_events(port: int, args: argparse.Namespace) -> tuple[list[float], float, int]:
    """Posts every event (and the repeats); returns the answer times in ms, when the last
    was answered (monotonic) and how many answers were not 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/events/webhook/{PLATFORM}/"
    times: list[float] = []
    failures = 0
    started = time.monotonic()
    for n in range(args.events):
        repeats = 2 if args.resend_every and n % args.resend_every == 0 else 1
        body = json.dumps({"events": [event(n)]}).encode()
        for _ in range(repeats):
            headers = signed(body)
            sent = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            times.append((time.perf_counter() - sent) * 1000)
            if answer.status != 200:
                failures += 1
                if failures <= 3:
                    print(f"  answer {answer.status} to event {n}", flush=True)
        if (n + 1) % 2000 == 0:
            print(f"  {n + 1:,} events posted ({time.monotonic() - started:.0f} s)", flush=True)
    conn.close()
    return times, time.monotonic(), failures


def wait_applied(url: str, n: int, since: float, limit: float) -> float | None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state = 'received') "
                "FROM preferences_platformevent"
            ).fetchone()
            assert row is not None
            stored, waiting = row
            elapsed = time.monotonic() - since
            if stored >= n and waiting == 0:
                return elapsed
            if elapsed > limit * 3:
                print(f"  gave up: {stored:,} stored, {waiting:,} not applied", flush=True)
                return None
            time.sleep(0.2)


def count_outcome(url: str, n: int) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        ids = {
            row[0]
            for row in conn.execute(
                "SELECT event_id FROM preferences_platformevent WHERE platform = %s", [PLATFORM]
            )
        }
        per_event: dict[str, int] = dict(
            conn.execute(
                "SELECT substring(note from 'event (bench-[0-9]+)'), count(*) "
                "FROM audit_auditentry WHERE note LIKE %s GROUP BY 1",
                ["%(event bench-%"],
            ).fetchall()
        )
        states: dict[str, int] = dict(
            conn.execute(
                "SELECT state, count(*) FROM preferences_platformevent GROUP BY state"
            ).fetchall()
        )
    sent = {f"bench-{k}" for k in range(n)}
    return {
        "lost": len(sent - ids) + len([k for k in sent if k not in per_event]),
        "duplicated": len([count for count in per_event.values() if count > 1]),
        **{f"state_{key}": value for key, value in states.items()},
    }


def main() -> int:
    args = parse_args()
    env = configure(os.environ.get("DATABASE_URL", DEFAULT_URL))
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed")
    prepare_database(env, args.events)
    directory = Path(tempfile.mkdtemp(prefix="bench-events-"))
    redis_port, web_port = free_port(), free_port()
    env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    bin_dir = Path(sys.executable).parent
    try:
        with (
            process(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
                env,
                directory / "redis.log",
            ) as redis,
            process(
                [
                    str(bin_dir / "gunicorn"),
                    "config.wsgi",
                    "--bind",
                    f"127.0.0.1:{web_port}",
                    "--workers",
                    "2",
                ],
                env,
                directory / "gunicorn.log",
            ) as web,
            process(
                [
                    str(bin_dir / "celery"),
                    "-A",
                    "config",
                    "worker",
                    "--concurrency",
                    "2",
                    "-l",
                    "info",
                ],
                env,
                directory / "worker.log",
            ),
        ):
            wait_for_port(redis_port, redis, directory / "redis.log")
            wait_for_port(web_port, web, directory / "gunicorn.log")
            wait_for_worker(directory / "worker.log")
            print(f"gunicorn on {web_port}, a worker, Redis on {redis_port}", flush=True)
            times, last_answer, failures = post_events(web_port, args)
            applied = wait_applied(
                env["DATABASE_URL"], args.events, last_answer, args.applied_target_seconds
            )
            outcome = count_outcome(env["DATABASE_URL"], args.events)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    p50 = statistics.median(times)
    p95 = statistics.quantiles(times, n=100)[94]
    print(
        f"\nRequests: {len(times):,} ({args.events:,} events, repeats included); "
        f"not 200: {failures}"
    )
    print(f"Answer: p50 {p50:.1f} ms, p95 {p95:.1f} ms (target <= {args.p95_target_ms:g} ms)")
    shown = "never" if applied is None else f"{applied:.1f} s"
    print(
        f"All applied: {shown} after the last answer (target <= {args.applied_target_seconds:g} s)"
    )
    print(
        "Event states: "
        + ", ".join(f"{k[6:]} {v:,}" for k, v in outcome.items() if k.startswith("state_"))
    )
    ok = (
        failures == 0
        and applied is not None
        and applied <= args.applied_target_seconds
        and p95 <= args.p95_target_ms
        and outcome["lost"] == 0
        and outcome["duplicated"] == 0
    )
    print(f"Targets: {'PASS' if ok else 'FAIL'}\n")
    print(
        f"BENCH events n={args.events} answer_p95_ms={p95:.1f} "
        f"applied_seconds={-1 if applied is None else round(applied, 1)} "
        f"lost={outcome['lost']} duplicated={outcome['duplicated']}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
