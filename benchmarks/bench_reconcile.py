"""Benchmark: the nightly reconciliation of a million contacts against Salesforce (the
stand-in's Bulk API 2.0 result) and Ascend's opt-out file, and of the app's own data.

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_reconcilebench \\
        .venv/bin/python benchmarks/bench_reconcile.py [--contacts 1000000] [--reuse]

Target: reconcile.run(["salesforce", "ascend", "app"]) in at most 120 s with a peak RSS of
at most 300 MB in the process that runs it.

What it does:

1. Starts the Salesforce stand-in in a process of its own (``python -m standins.salesforce``,
   as scripts/demo does); it is stopped on the way out, whatever happens (and the kernel
   sends it SIGTERM should this process be killed outright).
2. Prepares everything else in a child process, so that nothing the preparation held counts
   in the measured process's memory: migrates the database (its name must contain "bench");
   unless --reuse finds a database seeded by this script with the same options, drops and
   recreates it and seeds the email categories and --contacts contacts by COPY, with
   Salesforce and Ascend IDs and emails; about 16 % opted out of email (a quarter of those
   re-enrolled since), 5 % of phone, categories for the rest; every changed contact synced
   to both targets (no sync row, for a contact never changed, counts as settled too). On
   top: --in-flight contacts whose email opt-out is still pending for both targets (so the
   targets still hold the old values: to be skipped, not found) and --duplicates pairs of
   contacts sharing an email address (the app's own discrepancies).
   Then loads the stand-in with the same contacts and values (a data load: one request per
   50,000), except --changed of them with one field changed (an opt-out or a category
   checkbox), and writes Ascend's ascend-optouts-<date>.csv with the same contacts and
   values except --changed others with an opt-out flipped. Clears the discrepancies and runs
   a previous run of this script left.
3. In this process: django.setup(), then resets the kernel's peak-RSS mark (VmHWM, through
   /proc/self/clear_refs) and times reconcile.run(["salesforce", "ascend", "app"]); peak RSS
   is VmHWM read right after it returns (also sampled every 20 ms by a thread, as a check).
   Phases are timed by wrapping, in this process only, the Bulk API page reads, the COPY of
   each page and every SQL statement (connection.execute_wrapper); CPU seconds are read
   from /proc for this process, the stand-in and the PostgreSQL backend.
4. Checks, per system, that the open discrepancies are exactly the planted ones (kind and
   key) and that the in-flight contacts were skipped, not recorded; prints the figures and
   ends with one line: BENCH reconcile contacts=N seconds=S peak_rss_mb=M discrepancies=D.

--explain runs the reconciliation a second time afterwards (a second night: every
discrepancy is then seen again), with each comparison statement replaced by EXPLAIN
(ANALYZE, BUFFERS) of itself (which still creates its table), and prints the plans. The
figures and the BENCH line are the first run's.

Exit status 0 if both targets are met and every check passes.
"""

from __future__ import annotations

import argparse
import csv
import gc
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from standin_process import StandInInfo, salesforce_standin

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_reconcilebench"
TARGET_SECONDS = 120.0
TARGET_RSS_MB = 300.0
CHUNK = 50_000  # contacts per COPY, per stand-in request
SYSTEMS = ["salesforce", "ascend", "app"]
# Bumped when the seeded data changes shape, so --reuse never trusts an older database.
SEED_FORMAT = 1
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the database if this script seeded it with the same options",
    )
    parser.add_argument(
        "--changed", type=int, help="contacts changed in each system (default: 1 %%)"
    )
    parser.add_argument(
        "--in-flight", type=int, help="contacts with a change still pending (default: 0.1 %%)"
    )
    parser.add_argument(
        "--duplicates", type=int, help="pairs of contacts sharing an email (default: 0.1 %%)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="random seed for the data")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="afterwards, a second run with EXPLAIN ANALYZE of the comparison statements",
    )
    args = parser.parse_args()
    n = args.contacts
    args.changed = n // 100 if args.changed is None else args.changed
    args.in_flight = n // 1000 if args.in_flight is None else args.in_flight
    args.duplicates = n // 1000 if args.duplicates is None else args.duplicates
    if n < 1 or args.changed + args.in_flight > n or 2 * args.duplicates > n:
        parser.error("--changed + --in-flight and 2 x --duplicates must fit in --contacts")
    return args


def signature(args: argparse.Namespace) -> str:
    """What the seeded database depends on: kept as the database's comment for --reuse."""
    return (
        f"bench_reconcile format={SEED_FORMAT} contacts={args.contacts} seed={args.seed} "
        f"in_flight={args.in_flight} duplicates={args.duplicates}"
    )


# ---- the environment and the database -------------------------------------------------------


def configure_environment() -> dict[str, Any]:
    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ["DEBUG"] = "false"  # no query logging, production code paths
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-" + "x" * 40)
    os.environ.setdefault("STATIC_MANIFEST", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    # Nothing here publishes, but a stray message must never reach a shared Redis.
    os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    import dj_database_url

    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = db["NAME"]
    if "bench" not in name or name.startswith("test"):
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    return dict(db)


def _admin_connection(db: dict[str, Any]) -> Any:
    import psycopg

    conninfo = psycopg.conninfo.make_conninfo(
        host=str(db.get("HOST") or "127.0.0.1"),
        port=str(db.get("PORT") or 5432),
        user=str(db.get("USER") or "postgres"),
        password=str(db.get("PASSWORD") or ""),
        dbname="postgres",
    )
    return psycopg.connect(conninfo, autocommit=True)


def prepare_database(db: dict[str, Any], args: argparse.Namespace) -> bool:
    """Before Django connects. Returns whether the database must be seeded."""
    from psycopg import sql

    name = db["NAME"]
    with _admin_connection(db) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        if row is not None and args.reuse and row[0] == signature(args):
            print(f"Database {name}: reused (--reuse; seeded as {row[0]!r})", flush=True)
            return False
        if row is not None:
            why = "no --reuse" if not args.reuse else f"seeded otherwise ({row[0]!r})"
            print(f"Database {name}: dropped ({why})", flush=True)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"Database {name}: created", flush=True)
    return True


def mark_seeded(db: dict[str, Any], args: argparse.Namespace) -> None:
    from psycopg import sql

    with _admin_connection(db) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(db["NAME"]), sql.Literal(signature(args))
            )
        )


# ---- the stand-in -----------------------------------------------------------------------------


def point_settings_at(standin: StandInInfo, dropbox: Path, staging: Path) -> None:
    """Settings come from the environment (config/settings.py), read at django.setup()."""
    os.environ.update(
        {
            "SALESFORCE_ENABLED": "true",
            "SALESFORCE_LOGIN_URL": standin.url,
            "SALESFORCE_CLIENT_ID": standin.client_id,
            "SALESFORCE_CLIENT_SECRET": standin.secret,
            "SALESFORCE_CA_BUNDLE": standin.ca_path,
            "ASCEND_DESTINATION": str(dropbox),
            "ASCEND_STAGING_DIR": str(staging),
        }
    )


# ---- the data: who is what, and what was changed where ---------------------------------------


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = BASE62[rest] + digits
    return digits.rjust(width, "0")


def salesforce_id(pk: int) -> str:
    from lib.salesforce_ids import salesforce_id_18

    return salesforce_id_18("003Rc" + _base62(pk, 10))


def ascend_id(pk: int) -> str:
    return str(3_000_000_000 + pk)


def person_name(pk: int) -> tuple[str, str]:
    from preferences.management.commands.seed_demo import FIRST, LAST

    return FIRST[pk * 7919 % len(FIRST)], LAST[pk * 104_729 % len(LAST)]


def email_of(pk: int) -> str:
    # A function of the id alone, so a contact's twin can be given it before it is generated.
    from preferences.management.commands.seed_demo import DOMAINS

    first, last = person_name(pk)
    return f"{first}.{last}{pk}@{DOMAINS[pk % len(DOMAINS)]}".lower()


@dataclass(frozen=True)
class Plan:
    """What differs where, chosen from the seed alone: the preparation plants it, this
    process checks the run found exactly it."""

    contacts: int
    in_flight: frozenset[int]  # a change pending for both targets: skipped, not found
    salesforce: dict[int, str]  # contact -> the Salesforce field changed there
    ascend: dict[int, str]  # contact -> the column flipped in Ascend's file
    twins: dict[int, int]  # contact -> the contact whose email it was given

    def expected(self, system: str) -> dict[str, str]:
        """The open discrepancies the run must leave: key -> kind."""
        if system == "salesforce":
            return {salesforce_id(pk): "differs" for pk in self.salesforce}
        if system == "ascend":
            return {ascend_id(pk): "differs" for pk in self.ascend}
        return {email_of(pk): "duplicate_email" for pk in self.twins.values()}


def make_plan(args: argparse.Namespace) -> Plan:
    from lib.channels import SALESFORCE_FIELDS
    from preferences.management.commands.seed_demo import CATEGORIES

    everyone = range(1, args.contacts + 1)
    in_flight = frozenset(random.Random(f"{args.seed}-in-flight").sample(everyone, args.in_flight))

    def changed(system: str, fields: list[str]) -> dict[int, str]:
        rng = random.Random(f"{args.seed}-{system}")
        drawn = rng.sample(everyone, args.changed + args.in_flight)
        return {pk: rng.choice(fields) for pk in drawn if pk not in in_flight}

    flags = list(SALESFORCE_FIELDS.values())
    salesforce = changed("salesforce", [*flags, *(f for _k, _n, f in CATEGORIES)])
    ascend = changed("ascend", flags)
    chosen = random.Random(f"{args.seed}-duplicates").sample(everyone, 2 * args.duplicates)
    twins = dict(zip(chosen[args.duplicates :], chosen[: args.duplicates], strict=True))
    return Plan(
        args.contacts,
        in_flight,
        dict(list(salesforce.items())[: args.changed]),
        dict(list(ascend.items())[: args.changed]),
        twins,
    )


class Person(NamedTuple):
    pk: int
    first: str
    last: str
    email: str
    phone: str
    country: str
    created: datetime
    version: int
    preferences: list[tuple[str, bool, datetime, str, str]]  # channel, out, when, source, note
    categories: list[str]
    sync: tuple[int, str, datetime | None, datetime] | None  # version, status, synced, updated
    remote_out: frozenset[str]  # what both targets hold: the app's values, unless in flight
    remote_categories: list[str]
    remote_version: int


def people(plan: Plan, seed: int, now: datetime) -> Iterator[Person]:
    """Every contact, in id order, the same for the same seed (the seeded database and the
    external data are made from it)."""
    from lib.channels import Channel
    from preferences.management.commands.seed_demo import (
        CATEGORIES,
        COUNTRIES,
        NOTES_IN,
        NOTES_OUT,
        NOTES_PHONE,
    )

    rng = random.Random(f"{seed}-contacts")
    keys = [key for key, _name, _field in CATEGORIES]
    latest = now - timedelta(days=1)

    def later(moment: datetime) -> datetime:
        step = timedelta(days=rng.randint(1, 200), minutes=rng.randint(0, 1440))
        return min(moment + step, latest)

    for pk in range(1, plan.contacts + 1):
        first, last = person_name(pk)
        twin = plan.twins.get(pk)
        phone = (
            f"+1 ({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}"
            if rng.random() < 0.8
            else ""
        )
        created = now - timedelta(days=rng.randint(400, 3000))
        moment = created + timedelta(days=rng.randint(30, 300))
        version = 0
        out: set[str] = set()
        touched: dict[str, tuple[str, bool, datetime, str, str]] = {}
        roll = 1.0 if pk in plan.in_flight else rng.random()
        categories = {k for k in keys if rng.random() < 0.35}
        if roll < 0.16:
            moment = later(moment)
            version += 1
            out.add(Channel.EMAIL)
            categories = set()  # opting out of email turns every category off
            source = "email_platform" if rng.random() < 0.5 else "staff"
            touched[Channel.EMAIL] = (Channel.EMAIL, True, moment, source, rng.choice(NOTES_OUT))
            if roll < 0.04:  # re-enrolled since, then ticked two categories
                moment = later(moment)
                version += 2
                out.discard(Channel.EMAIL)
                categories = set(rng.sample(keys, 2))
                touched[Channel.EMAIL] = (Channel.EMAIL, False, moment, "staff", NOTES_IN[0])
        if rng.random() < 0.05:
            moment = later(moment)
            version += 1
            out.add(Channel.PHONE)
            touched[Channel.PHONE] = (Channel.PHONE, True, moment, "staff", NOTES_PHONE[0])
        synced = moment + timedelta(seconds=20)
        sync: tuple[int, str, datetime | None, datetime] | None = (
            (version, "synced", synced, synced) if version else None
        )
        remote_out, remote_categories, remote_version = frozenset(out), sorted(categories), version
        if pk in plan.in_flight:  # opted out of email ten minutes ago; not pushed yet
            moment = now - timedelta(minutes=10)
            version += 1
            out.add(Channel.EMAIL)
            categories = set()
            touched[Channel.EMAIL] = (Channel.EMAIL, True, moment, "staff", NOTES_OUT[0])
            sync = (remote_version, "pending", sync[2] if sync else None, moment)
        yield Person(
            pk=pk,
            first=first,
            last=last,
            email=email_of(twin if twin is not None else pk),
            phone=phone,
            country=rng.choice(COUNTRIES),
            created=created,
            version=version,
            preferences=list(touched.values()),
            categories=sorted(categories),
            sync=sync,
            remote_out=remote_out,
            remote_categories=remote_categories,
            remote_version=remote_version,
        )


def chunks(items: Iterator[Person], size: int) -> Iterator[list[Person]]:
    chunk: list[Person] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- the preparation (a child process) ------------------------------------------------------


@dataclass(frozen=True)
class Preparation:
    args: argparse.Namespace
    db: dict[str, Any]
    seed_database: bool
    standin: StandInInfo
    dropbox: Path


def _copy(cursor: Any, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _seed_chunk(chunk: list[Person], category_ids: dict[str, int]) -> None:
    from django.db import connection, transaction

    contacts, preferences, subscriptions, syncs = [], [], [], []
    for p in chunk:
        contacts.append(
            (
                p.pk,
                p.first,
                p.last,
                p.email,
                p.phone,
                salesforce_id(p.pk),
                ascend_id(p.pk),
                p.country,
                False,
                p.version,
                p.created,
            )
        )
        for channel, out, when, source, note in p.preferences:
            preferences.append((p.pk, channel, out, when, source, note))
        for key in p.categories:
            subscriptions.append((p.pk, category_ids[key], p.created))
        if p.sync is not None:
            version, status, synced_at, updated_at = p.sync
            for target in ("salesforce", "ascend"):
                syncs.append((p.pk, target, version, version, status, "", 0, updated_at, synced_at))
    with transaction.atomic(), connection.cursor() as cursor:
        _copy(
            cursor,
            "preferences_contact",
            "id, first_name, last_name, email, phone, salesforce_id, ascend_id, country, "
            "email_bounced, version, created_at",
            contacts,
        )
        _copy(
            cursor,
            "preferences_channelpreference",
            "contact_id, channel, opted_out, changed_at, source, note",
            preferences,
        )
        _copy(
            cursor,
            "preferences_subscription",
            "contact_id, category_id, subscribed_at",
            subscriptions,
        )
        _copy(
            cursor,
            "preferences_contactsync",
            "contact_id, target, synced_version, notes_version, status, last_error, attempts, "
            "updated_at, synced_at",
            syncs,
        )


def prepare(job: Preparation) -> None:
    """Seed (unless reused), load the stand-in, write Ascend's file. Runs in a child."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_environment()
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from lib.channels import SALESFORCE_FIELDS, Channel
    from preferences.management.commands.seed_demo import CATEGORIES
    from preferences.models import EmailCategory
    from standins.salesforce import SalesforceStandInClient

    args = job.args
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    print(f"  migrate: {time.perf_counter() - started:.1f} s")
    for position, (key, name, field_name) in enumerate(CATEGORIES):
        EmailCategory.objects.get_or_create(
            key=key, defaults={"name": name, "salesforce_field": field_name, "position": position}
        )
    category_ids = dict(EmailCategory.objects.values_list("key", "pk"))
    category_fields = [(key, field_name) for key, _name, field_name in CATEGORIES]
    plan = make_plan(args)
    client = SalesforceStandInClient(
        job.standin.url, job.standin.ca_path, job.standin.secret, job.standin.client_id
    )
    now = timezone.now()
    exported = f"{now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"  # after every seeded change
    email_field, phone_field = SALESFORCE_FIELDS[Channel.EMAIL], SALESFORCE_FIELDS[Channel.PHONE]
    version_field = str(settings.SALESFORCE_VERSION_FIELD or "")
    seconds: dict[str, float] = defaultdict(float)
    path = job.dropbox / f"ascend-optouts-{now.astimezone(UTC):%Y%m%d}.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ascend_id", "salesforce_id", email_field, phone_field, "exported_at"])
        for chunk in chunks(people(plan, args.seed, now), CHUNK):
            if job.seed_database:
                t0 = time.perf_counter()
                _seed_chunk(chunk, category_ids)
                seconds["database"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            records = []
            for p in chunk:
                record: dict[str, Any] = {
                    "Id": salesforce_id(p.pk),
                    "FirstName": p.first,
                    "LastName": p.last,
                    email_field: Channel.EMAIL in p.remote_out,
                    phone_field: Channel.PHONE in p.remote_out,
                }
                for key, field_name in category_fields:
                    record[field_name] = key in p.remote_categories
                if version_field:  # null until the app first pushes the contact
                    record[version_field] = p.remote_version or None
                changed = plan.salesforce.get(p.pk)
                if changed is not None:  # the data load's one change to this contact
                    record[changed] = not record[changed]
                records.append(record)
            client.add_contacts(records)
            seconds["stand-in"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            for p in chunk:
                flags = {
                    email_field: Channel.EMAIL in p.remote_out,
                    phone_field: Channel.PHONE in p.remote_out,
                }
                flipped = plan.ascend.get(p.pk)
                if flipped is not None:
                    flags[flipped] = not flags[flipped]
                writer.writerow(
                    [
                        ascend_id(p.pk),
                        salesforce_id(p.pk),
                        "TRUE" if flags[email_field] else "FALSE",
                        "TRUE" if flags[phone_field] else "FALSE",
                        exported,
                    ]
                )
            seconds["file"] += time.perf_counter() - t0
            done = chunk[-1].pk
            if done % (10 * CHUNK) == 0 or done == plan.contacts:
                print(
                    f"  {done:,} / {plan.contacts:,} contacts "
                    f"({time.perf_counter() - started:.0f} s)"
                )
    client.close()
    print(
        f"  Salesforce stand-in loaded: {plan.contacts:,} contacts, {len(plan.salesforce):,} "
        f"of them changed ({seconds['stand-in']:.1f} s)"
    )
    print(
        f"  Ascend file {path.name}: {path.stat().st_size / 1e6:.0f} MB, "
        f"{len(plan.ascend):,} contacts changed ({seconds['file']:.1f} s)"
    )
    with connection.cursor() as cursor:
        if job.seed_database:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('preferences_contact', 'id'), %s)",
                [plan.contacts],
            )
            t0 = time.perf_counter()
            # As autovacuum would have by the night: statistics and the visibility map.
            for table in (
                "preferences_contact",
                "preferences_channelpreference",
                "preferences_subscription",
                "preferences_contactsync",
            ):
                cursor.execute(f"VACUUM ANALYZE {table}")
            print(
                f"  database seeded: {plan.contacts:,} contacts in {seconds['database']:.1f} s "
                f"(COPY), VACUUM ANALYZE {time.perf_counter() - t0:.1f} s"
            )
            mark_seeded(job.db, args)
        # A previous run's findings would turn this run's inserts into updates.
        cursor.execute("DELETE FROM integrations_discrepancy")
        cursor.execute("DELETE FROM integrations_reconcilerun")
        cursor.execute(
            "SELECT (SELECT count(*) FROM preferences_contact),"
            " (SELECT count(*) FROM preferences_channelpreference WHERE opted_out"
            "  AND channel = 'email'),"
            " (SELECT count(*) FROM preferences_channelpreference WHERE opted_out"
            "  AND channel = 'phone'),"
            " (SELECT count(DISTINCT contact_id) FROM preferences_subscription),"
            " (SELECT count(*) FROM preferences_contactsync),"
            " (SELECT count(*) FROM preferences_contactsync WHERE status <> 'synced'),"
            " pg_size_pretty(pg_database_size(current_database()))"
        )
        contacts, email_out, phone_out, subscribed, syncs, pending, size = cursor.fetchone()
    print(
        f"  database: {contacts:,} contacts, {email_out:,} opted out of email, {phone_out:,} "
        f"of phone, {subscribed:,} with categories; {syncs:,} sync rows ({pending:,} pending); "
        f"{size}"
    )


# ---- measuring -------------------------------------------------------------------------------


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False if the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU of a process so far (utime and stime in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """VmRSS every 20 ms: a check on VmHWM, and the figure if VmHWM cannot be reset."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = _status_kb("VmRSS")
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))

    def stop(self) -> int:
        self.halt.set()
        self.join()
        self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))
        return self.peak_kb


_STATEMENTS = [
    ("CREATE TEMP TABLE reconcile_compared", "compare (CREATE TEMP TABLE AS)"),
    ("ANALYZE reconcile_remote", "ANALYZE temp table"),
    ("SELECT count(*) FROM reconcile_remote remote JOIN", "count compared"),
    ("SELECT count(*) FROM preferences_contact", "count compared"),
    ("SELECT kind, count(*) FROM reconcile_compared", "record: counts"),
    ("SELECT count(*) FROM reconcile_compared", "record: counts"),
    ("INSERT INTO integrations_discrepancy", "record: INSERT discrepancies"),
    ("UPDATE integrations_discrepancy", "record: close disappeared"),
]


@dataclass
class Phases:
    """Wall seconds per (system, phase), from wrappers around the app's own functions."""

    explain: bool = False
    system: str = "-"
    seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    plans: list[tuple[str, str]] = field(default_factory=list)

    def add(self, phase: str, seconds: float, count: int = 1) -> None:
        self.seconds[self.system, phase] += seconds
        self.counts[self.system, phase] += count

    def execute(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any):
        text = " ".join(sql.split())
        phase = next((name for start, name in _STATEMENTS if text.startswith(start)), "other SQL")
        if self.explain and phase.startswith("compare"):
            # EXPLAIN ANALYZE of CREATE TABLE AS still creates the table: the run carries on.
            t0 = time.perf_counter()
            result = execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params, many, ctx)
            self.add(phase, time.perf_counter() - t0)
            plan = "\n".join(row[0] for row in ctx["cursor"].fetchall())
            self.plans.append((self.system, plan))
            return result
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, ctx)
        finally:
            self.add(phase, time.perf_counter() - t0)


@contextmanager
def instrumented(phases: Phases) -> Iterator[None]:
    """Wrap, in this process only, what reconcile.run calls, to time its phases."""
    from django.db import connection

    from integrations import reconcile
    from integrations.salesforce.client import SalesforceClient

    originals: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, make(original))

    def per_system(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = args[0] if args else None
            phases.system = target.name if target is not None else "app"
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases.add("total", time.perf_counter() - t0)
                phases.system = "-"

        return wrapper

    def timed_flush(original: Any) -> Any:
        def flush(self: Any) -> None:
            rows = len(self.pending)
            t0 = time.perf_counter()
            original(self)
            if rows:
                phases.add("read: COPY pages into the temp table", time.perf_counter() - t0, rows)

        return flush

    def timed_pages(original: Any) -> Any:
        def bulk_query(self: Any, *args: Any, **kwargs: Any) -> Iterator[str]:
            pages = original(self, *args, **kwargs)
            while True:
                t0 = time.perf_counter()
                try:
                    page = next(pages)
                except StopIteration:
                    return
                finally:
                    phases.add("read: Bulk API pages (HTTP)", time.perf_counter() - t0)
                yield page

        return bulk_query

    patch(reconcile, "reconcile_target", per_system)
    patch(reconcile, "reconcile_app", per_system)
    patch(reconcile._Rows, "flush", timed_flush)
    patch(SalesforceClient, "bulk_query", timed_pages)
    try:
        with connection.execute_wrapper(phases.execute):
            yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


@dataclass
class Measured:
    seconds: float
    cpu: dict[str, float]
    rss_before_mb: float
    peak_mb: float
    sampled_peak_mb: float
    peak_source: str
    runs: list[Any]
    phases: Phases


def measure(standin_pid: int, explain: bool = False) -> Measured:
    from django.db import connection

    from integrations import reconcile

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    phases = Phases(explain=explain)
    gc.collect()
    rss_before = _status_kb("VmRSS")
    reset = _reset_peak()
    sampler = RssSampler()
    sampler.start()
    cpu_before = {
        "this process": time.process_time(),
        "Salesforce stand-in": cpu_seconds(standin_pid),
        "PostgreSQL backend": cpu_seconds(backend),
    }
    started = time.perf_counter()
    try:
        with instrumented(phases):
            runs = reconcile.run(SYSTEMS)
    finally:
        seconds = time.perf_counter() - started
        hwm = _status_kb("VmHWM")
        sampled = sampler.stop()
    cpu_after = {
        "this process": time.process_time(),
        "Salesforce stand-in": cpu_seconds(standin_pid),
        "PostgreSQL backend": cpu_seconds(backend),
    }
    return Measured(
        seconds=seconds,
        cpu={k: cpu_after[k] - cpu_before[k] for k in cpu_before},
        rss_before_mb=rss_before / 1024,
        peak_mb=(hwm if reset else sampled) / 1024,
        sampled_peak_mb=sampled / 1024,
        peak_source="VmHWM, reset just before" if reset else "sampled every 20 ms",
        runs=runs,
        phases=phases,
    )


# ---- the report ------------------------------------------------------------------------------


@dataclass
class Check:
    system: str
    found: dict[str, str]
    expected: dict[str, str]
    run: Any
    want_compared: int
    want_skipped: int

    @property
    def missing(self) -> int:
        return sum(1 for key, kind in self.expected.items() if self.found.get(key) != kind)

    @property
    def extra(self) -> int:
        return sum(1 for key, kind in self.found.items() if self.expected.get(key) != kind)

    @property
    def ok(self) -> bool:
        return (
            self.run is not None
            and not self.run.failed
            and self.found == self.expected
            and self.run.compared == self.want_compared
            and self.run.skipped == self.want_skipped
        )


def check(plan: Plan, runs: list[Any]) -> list[Check]:
    from integrations.models import Discrepancy

    by_system = {run.system: run for run in runs}
    checks = []
    for system in SYSTEMS:
        found = dict(Discrepancy.objects.open().filter(system=system).values_list("key", "kind"))
        skipped = len(plan.in_flight) if system != "app" else 0
        checks.append(
            Check(
                system,
                found,
                plan.expected(system),
                by_system.get(system),
                plan.contacts,
                skipped,
            )
        )
    return checks


def print_phases(phases: Phases, wall: float) -> None:
    names = [
        "read: Bulk API pages (HTTP)",
        "read: COPY pages into the temp table",
        "read: the rest (CSV parsing, RemoteRows.add; in Python)",
        "ANALYZE temp table",
        "compare (CREATE TEMP TABLE AS)",
        "count compared",
        "record: counts",
        "record: INSERT discrepancies",
        "record: close disappeared",
        "other SQL",
        "total",
    ]
    seconds = dict(phases.seconds)
    for system in SYSTEMS:
        measured = sum(
            value
            for (where, name), value in seconds.items()
            if where == system and name not in ("total",) and not name.startswith("read: the")
        )
        if system != "app":
            seconds[system, names[2]] = seconds.get((system, "total"), 0.0) - measured
    print(f"{'phase (wall s)':<58}" + "".join(f"{s:>12}" for s in SYSTEMS))
    for name in names:
        cells = []
        for system in SYSTEMS:
            value = seconds.get((system, name))
            cells.append(f"{'-':>12}" if value is None else f"{value:>12.1f}")
        print(f"{name:<58}" + "".join(cells))
    outside = wall - sum(seconds.get((s, "total"), 0.0) for s in SYSTEMS)
    print(f"{'outside the three (advisory lock)':<58}{outside:>12.1f}")
    pages = phases.counts.get(("salesforce", "read: Bulk API pages (HTTP)"), 0)
    copied = {
        system: phases.counts.get((system, "read: COPY pages into the temp table"), 0)
        for system in SYSTEMS[:2]
    }
    print(
        f"Bulk API result pages read: {max(pages - 1, 0)} (plus the call that found no more); "
        "rows COPYed: " + ", ".join(f"{s} {n:,}" for s, n in copied.items())
    )


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # SIGTERM runs the finally blocks too (the stand-in is stopped), as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db = configure_environment()
    directory = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    dropbox, staging = directory / "dropbox", directory / "staging"
    dropbox.mkdir()
    try:
        with salesforce_standin(directory) as standin:
            point_settings_at(standin, dropbox, staging)
            seed_database = prepare_database(db, args)
            print("Preparing (in a child process) ...", flush=True)
            started = time.perf_counter()
            job = Preparation(args, db, seed_database, standin, dropbox)
            child = multiprocessing.get_context("spawn").Process(
                target=prepare, args=(job,), daemon=True
            )
            child.start()
            try:
                child.join()
            finally:
                if child.is_alive():  # interrupted: it would only fail without the stand-in
                    child.terminate()
                    child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the preparation failed (exit {child.exitcode})")
            print(f"Prepared in {time.perf_counter() - started:.0f} s", flush=True)
            return run_and_report(args, standin)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_and_report(args: argparse.Namespace, standin: StandInInfo) -> int:
    import django

    django.setup()
    from django.db import connection

    from integrations.salesforce.client import BULK_PAGE_SIZE

    plan = make_plan(args)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT version(), current_setting('shared_buffers'), current_setting('work_mem'),"
            " current_setting('max_parallel_workers_per_gather'), current_setting('jit')"
        )
        pg_version, shared_buffers, work_mem, parallel, jit = cursor.fetchone()
    print(
        f"{pg_version.split(',')[0]}; shared_buffers={shared_buffers} work_mem={work_mem} "
        f"max_parallel_workers_per_gather={parallel} jit={jit}; {os.cpu_count()} CPUs; "
        f"load {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"\nReconciling {args.contacts:,} contacts: reconcile.run({SYSTEMS}) ...", flush=True)
    measured = measure(standin.pid)
    checks = check(plan, measured.runs)
    total = sum(len(c.found) for c in checks)

    print()
    print(
        f"{'system':<12}{'compared':>10}{'skipped':>9}{'found':>8}{'planted':>9}"
        f"{'missing':>9}{'extra':>7}{'run s':>8}  check  detail"
    )
    for c in checks:
        run = c.run
        took = (run.finished_at - run.started_at).total_seconds() if run else float("nan")
        print(
            f"{c.system:<12}{run.compared if run else 0:>10,}{run.skipped if run else 0:>9,}"
            f"{len(c.found):>8,}{len(c.expected):>9,}{c.missing:>9,}{c.extra:>7,}{took:>8.1f}  "
            f"{'PASS' if c.ok else 'FAIL':<5}  "
            + ("(no run)" if run is None else f"{'FAILED: ' if run.failed else ''}{run.detail}")
        )
    print(
        "check = found every planted discrepancy (kind and key) and nothing else; compared "
        f"every contact; skipped exactly the {len(plan.in_flight):,} in flight (targets only)"
    )
    print()
    print_phases(measured.phases, measured.seconds)
    print(f"(Bulk API page size {BULK_PAGE_SIZE:,} rows)")
    print(
        "CPU seconds during the run: "
        + ", ".join(f"{name} {value:.1f}" for name, value in measured.cpu.items())
    )
    print()
    time_ok = measured.seconds <= TARGET_SECONDS
    rss_ok = measured.peak_mb <= TARGET_RSS_MB
    checks_ok = all(c.ok for c in checks)
    print(
        f"Wall time:  {measured.seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s): "
        f"{'PASS' if time_ok else 'FAIL'}"
    )
    print(
        f"Peak RSS:   {measured.peak_mb:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB): "
        f"{'PASS' if rss_ok else 'FAIL'}  [{measured.peak_source}; "
        f"{measured.rss_before_mb:.0f} MB before the run; highest 20 ms sample "
        f"{measured.sampled_peak_mb:.0f} MB]"
    )
    print(f"Discrepancies exactly the planted ones: {'PASS' if checks_ok else 'FAIL'}")

    if args.explain:
        print("\n--explain: a second run (a second night), comparisons under EXPLAIN ANALYZE")
        second = measure(standin.pid, explain=True)
        print_phases(second.phases, second.seconds)
        print(f"Second run: {second.seconds:.1f} s wall, peak RSS {second.peak_mb:.0f} MB")
        for system, plan_text in second.phases.plans:
            print(f"\n--- {system}: the comparison statement ---\n{plan_text}")
    print()
    print(
        f"BENCH reconcile contacts={args.contacts} seconds={measured.seconds:.1f} "
        f"peak_rss_mb={measured.peak_mb:.0f} discrepancies={total}"
    )
    return 0 if time_ok and rss_ok and checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
