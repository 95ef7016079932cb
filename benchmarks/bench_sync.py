"""Benchmark: push N preference changes to Salesforce through the stand-in.

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_syncbench \\
        .venv/bin/python benchmarks/bench_sync.py [--changes 10000] [--worker]

What it does:

1. Drops and recreates the benchmark database (its name must contain "bench") and runs
   Django's migrate.
2. Starts the Salesforce stand-in (HTTPS on loopback, in this process) and creates N
   contacts in it and in the database, in step.
3. Applies N changes, one per contact, through preferences.services.apply_change (opt-outs,
   do-not-call, category changes; each with a note, so each becomes a Task). Not part of
   the sync timing. The "push soon" messages apply_change queues after commit go to an
   in-memory broker here (kombu's memory://), never to a shared Redis.
4. The push phase, timed: preferences.sync.push_batch() in a loop, in this
   process, until nothing is left behind. With --worker instead: a private redis-server, a
   real `celery -A config worker` (prefork, --concurrency 2) and one sweep task, which is
   how the sweeper catches up with a backlog.
5. Prints the calls the stand-in received during the push phase (token requests included)
   against the target ceil(N / 200) + 5, the wall time against 60 s, and whether the
   stand-in now equals the database for every contact (opt-outs and every category field)
   with exactly one Task per change.

Exit status 0 if all three pass.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_syncbench"
TARGET_SECONDS = 60.0
BATCH = 200  # sObject Collections: records per call
SPARE_CALLS = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=10_000, help="contacts and changes")
    parser.add_argument(
        "--worker", action="store_true", help="push with a real Celery worker instead"
    )
    parser.add_argument(
        "--apply-threads", type=int, default=4, help="threads applying the changes (setup)"
    )
    return parser.parse_args()


def prepare_database() -> Any:
    """Drop and recreate the benchmark database, before Django connects to it."""
    import dj_database_url
    import psycopg
    from psycopg import sql

    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = db["NAME"]
    if "bench" not in name or name.startswith("test"):
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    conninfo: dict[str, Any] = {
        "host": db.get("HOST") or "127.0.0.1",
        "port": db.get("PORT") or 5432,
        "user": db.get("USER") or "postgres",
        "dbname": "postgres",
    }
    if db.get("PASSWORD"):
        conninfo["password"] = db["PASSWORD"]
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"Database {name}: recreated", flush=True)
    return db


def configure_environment(standin: Any) -> None:
    """Settings come from the environment (12-factor): point them at the stand-in."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "false",
            "SECRET_KEY": os.environ.get("SECRET_KEY") or "benchmark-only-secret-key-" + "x" * 40,
            "STATIC_MANIFEST": "false",
            "LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": "memory://localhost/",
            "SALESFORCE_ENABLED": "true",
            "SALESFORCE_LOGIN_URL": standin.url,
            "SALESFORCE_CLIENT_ID": standin.client_id,
            "SALESFORCE_CLIENT_SECRET": standin.client_secret,
            "SALESFORCE_CA_BUNDLE": standin.ca_path,
            "SYNC_PUSH_DELAY_SECONDS": "0",
        }
    )


def create_contacts(standin: Any, count: int) -> list[Any]:
    from preferences.management.commands.seed_demo import CATEGORIES
    from preferences.models import Contact, EmailCategory

    for position, (key, name, field) in enumerate(CATEGORIES):
        EmailCategory.objects.get_or_create(
            key=key, defaults={"name": name, "salesforce_field": field, "position": position}
        )
    unticked = {field: False for _key, _name, field in CATEGORIES}
    ids = standin.add_contacts(
        {"LastName": f"Bench{i}", "HasOptedOutOfEmail": False, "DoNotCall": False, **unticked}
        for i in range(count)
    )
    contacts = [
        Contact(
            first_name="Bench",
            last_name=f"Contact{i}",
            email=f"bench.contact{i}@example.edu",
            phone=f"+1 (303) 555-{i % 10_000:04d}",
            salesforce_id=salesforce_id,
            ascend_id=str(4_000_000_000 + i),
            country="US",
        )
        for i, salesforce_id in enumerate(ids)
    ]
    return Contact.objects.bulk_create(contacts, batch_size=2000)


def apply_changes(contacts: list[Any], threads: int) -> None:
    from django.contrib.auth.models import User
    from django.db import connection

    from preferences.services import apply_change

    actor = User.objects.create_user("bench-specialist@example.edu")
    kinds: list[dict[str, Any]] = [
        {"opt_out": {"email": True}},
        {"categories": ["newsletter", "events"]},
        {"opt_out": {"phone": True}},
        {"opt_out": {"phone": True}, "categories": ["giving"]},
    ]
    done = 0
    lock = threading.Lock()
    started = time.perf_counter()

    def apply(part: list[tuple[int, Any]]) -> None:
        nonlocal done
        try:
            for i, contact in part:
                apply_change(
                    contact=contact,
                    actor=actor,
                    source="staff",
                    note=f"Benchmark change {i}: as the contact asked.",
                    **kinds[i % len(kinds)],
                )
                with lock:
                    done += 1
                    if done % 2000 == 0:
                        rate = done / (time.perf_counter() - started)
                        print(f"  {done} changes applied ({rate:.0f}/s)", flush=True)
        finally:
            connection.close()

    numbered = list(enumerate(contacts))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(apply, [numbered[i::threads] for i in range(threads)]))


def behind() -> int:
    from django.db.models import F

    from preferences.models import ContactSync, SyncStatus

    return (
        ContactSync.objects.filter(target="salesforce")
        .exclude(status=SyncStatus.SYNCED, synced_version=F("contact__version"))
        .count()
    )


def push_in_process() -> list[float]:
    from integrations.salesforce.sync import push_batch

    batch_seconds: list[float] = []
    while True:
        started = time.perf_counter()
        outcome = push_batch()
        if outcome.claimed == 0:
            return batch_seconds
        batch_seconds.append(time.perf_counter() - started)
        if outcome.retry or outcome.failed:
            print(f"  batch: {outcome}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def push_with_worker(total: int, directory: Path) -> float:
    """A private redis-server and a real worker; one sweep starts the catch-up. Returns the
    seconds from the sweep until every contact is synced (the worker's start not counted)."""
    from django.db import connection

    from config.celery import app

    port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    db = connection.settings_dict
    env = {
        **os.environ,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    log = (directory / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "celery",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "-l",
            "info",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-n",
            "bench@localhost",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while " ready." not in (directory / "worker.log").read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start; see {directory / 'worker.log'}")
            time.sleep(0.2)
        print(f"Worker ready (database {db['NAME']}, broker port {port})", flush=True)
        from integrations.tasks import sweep

        started = time.perf_counter()
        # This process published to memory:// so far; the sweep goes to the worker's Redis.
        with app.connection_for_write(f"redis://127.0.0.1:{port}/0") as broker:
            sweep.apply_async(connection=broker)
        deadline = time.monotonic() + 600
        while (left := behind()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            print(f"  {left} of {total} contacts still behind after 600 s", flush=True)
        return time.perf_counter() - started
    finally:
        for process in (worker, redis):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def verify(standin: Any) -> tuple[bool, str]:
    """The stand-in equals the database for every contact; one Task per change."""
    from audit.models import AuditEntry
    from lib.channels import SALESFORCE_FIELDS
    from preferences.models import (
        ChannelPreference,
        Contact,
        EmailCategory,
        Subscription,
    )

    category_fields = dict(
        EmailCategory.objects.filter(is_active=True).values_list("key", "salesforce_field")
    )
    opted_out: dict[int, dict[str, bool]] = {}
    for pk, channel, value in ChannelPreference.objects.values_list(
        "contact_id", "channel", "opted_out"
    ):
        opted_out.setdefault(pk, {})[channel] = value
    subscribed: dict[int, set[str]] = {}
    for pk, key in Subscription.objects.values_list("contact_id", "category__key"):
        subscribed.setdefault(pk, set()).add(key)
    remote = standin.contacts()
    wrong = []
    for pk, salesforce_id in Contact.objects.values_list("pk", "salesforce_id"):
        want = {
            name: opted_out.get(pk, {}).get(channel, False)
            for channel, name in SALESFORCE_FIELDS.items()
        }
        want.update(
            {name: key in subscribed.get(pk, set()) for key, name in category_fields.items()}
        )
        record = remote.get(salesforce_id, {})
        if any(record.get(name) is not value for name, value in want.items()):
            wrong.append(salesforce_id)
    changes = {
        f"PD-{pk}": who
        for pk, who in AuditEntry.objects.filter(contact_version__isnull=False).values_list(
            "pk", "contact__salesforce_id"
        )
    }
    tasks = standin.tasks()
    task_keys = [task["Preference_Change_Id__c"] for task in tasks]
    tasks_ok = sorted(task_keys) == sorted(changes) and all(
        task["WhoId"] == changes[task["Preference_Change_Id__c"]] for task in tasks
    )
    ok = not wrong and tasks_ok
    detail = (
        f"{len(remote)} contacts compared, {len(wrong)} differ"
        + (f" (e.g. {wrong[:3]})" if wrong else "")
        + f"; {len(tasks)} Tasks for {len(changes)} changes"
        + ("" if tasks_ok else " (MISMATCH)")
    )
    return ok, detail


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from standins.salesforce import SalesforceStandIn

    prepare_database()
    standin = SalesforceStandIn().start()
    directory = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        configure_environment(standin)
        import django

        django.setup()
        from django.core.management import call_command

        started = time.perf_counter()
        call_command("migrate", verbosity=0, interactive=False)
        print(f"migrate: {time.perf_counter() - started:.1f} s", flush=True)

        started = time.perf_counter()
        contacts = create_contacts(standin, args.changes)
        print(
            f"{len(contacts)} contacts created in the stand-in and the database "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )

        started = time.perf_counter()
        apply_changes(contacts, args.apply_threads)
        print(
            f"{args.changes} changes applied through apply_change "
            f"({time.perf_counter() - started:.1f} s, not part of the sync timing)",
            flush=True,
        )
        assert behind() == args.changes

        calls_before = len(standin.call_log)
        api_before = standin.api_calls
        mode = "a real Celery worker (prefork, concurrency 2)" if args.worker else "in process"
        print(f"Push phase ({mode}) ...", flush=True)
        batch_seconds: list[float] = []
        if args.worker:
            wall = push_with_worker(args.changes, directory)
        else:
            started = time.perf_counter()
            batch_seconds = push_in_process()
            wall = time.perf_counter() - started

        log = standin.call_log[calls_before:]
        token_calls = sum(1 for _method, path in log if path.endswith("/oauth2/token"))
        api_calls = standin.api_calls - api_before
        total_calls = len(log)
        target_calls = math.ceil(args.changes / BATCH) + SPARE_CALLS
        calls_ok = total_calls <= target_calls
        time_ok = wall < TARGET_SECONDS
        state_ok, detail = verify(standin)

        print()
        print(f"Changes pushed:       {args.changes} ({mode})")
        if batch_seconds:
            print(
                f"Batches:              {len(batch_seconds)}, "
                f"{min(batch_seconds):.2f}-{max(batch_seconds):.2f} s each"
            )
        print(
            f"Salesforce calls:     {total_calls} = {api_calls} REST API "
            f"(composite) + {token_calls} token + {total_calls - api_calls - token_calls} other"
        )
        print(
            f"  target <= ceil({args.changes}/{BATCH}) + {SPARE_CALLS} = {target_calls}: "
            f"{'PASS' if calls_ok else 'FAIL'}"
        )
        print(
            f"Push wall time:       {wall:.1f} s (target < {TARGET_SECONDS:.0f} s): "
            f"{'PASS' if time_ok else 'FAIL'}"
        )
        print(f"Stand-in == database: {'PASS' if state_ok else 'FAIL'} ({detail})")
        print(
            f"BENCH sync changes={args.changes} seconds={wall:.1f} api_calls={total_calls} "
            f"state={'equal' if state_ok else 'differs'}"
        )
        return 0 if calls_ok and time_ok and state_ok else 1
    finally:
        standin.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
