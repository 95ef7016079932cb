"""Server-side latency benchmark for contact search and the contact page.

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_bench \
        .venv/bin/python benchmarks/bench_contacts.py [--contacts 1000000] [--reuse]

What it does:

1. Creates the benchmark database if needed (without --reuse it is dropped and recreated,
   so the seeded data is exactly --contacts contacts), runs Django's migrate.
2. Seeds --contacts contacts with `seed_demo` (COPY), unless --reuse and enough exist
   (with --reuse and too few, only the missing ones are added). Prints the seed time.
3. VACUUM ANALYZE.
4. Signs in as the demo specialist (force_login) and times requests made in-process with
   django.test.Client: perf_counter_ns around client.get, so the figure is the time Django
   spends handling the request (middleware, session, permission checks, queries, template
   rendering), with no network. DEBUG is off, so queries are not logged.
   Warm-up first; then --requests requests per kind with random inputs, round-robin over
   the kinds so a change of machine load during the run hits every kind alike.
5. Prints a table per request kind: n, p50, p95, max (ms), PASS/FAIL against p95 < 50 ms,
   the share of exact lookups whose contact was on the page, and the SQL queries per request
   (counted on a separate small pass with CaptureQueriesContext). Diagnostic columns after
   the "|": time inside cursor.execute (db) and this thread's CPU time (cpu), p50/p95, which
   tell database time from Python time, and a loaded machine from a slow query. The load
   average is printed too: the figures are only comparable between runs at similar load.

The database name must contain "bench": the script drops and recreates it.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_bench"
TARGET_P95_MS = 50.0
SPECIALIST = "specialist@demo.test"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database if it has enough contacts"
    )
    parser.add_argument("--requests", type=int, default=200, help="measured requests per kind")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per kind")
    parser.add_argument(
        "--query-pass", type=int, default=10, help="requests per kind for query counting"
    )
    parser.add_argument(
        "--seed-batch",
        type=int,
        default=2000,
        help="seed_demo --batch (its default 50,000 is slow: its per-contact de-duplication "
        "of preference rows is quadratic in the batch size)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for the inputs")
    parser.add_argument("--slowest", type=int, default=3, help="show the N slowest inputs per kind")
    return parser.parse_args()


def configure_environment() -> dict[str, Any]:
    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ["DEBUG"] = "false"  # no query logging, production code paths
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-" + "x" * 40)
    # With DEBUG off the settings default to the manifest storage, which needs collectstatic;
    # the plain storage renders {% static %} the same way minus the hash lookup.
    os.environ.setdefault("STATIC_MANIFEST", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))

    import dj_database_url

    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = db["NAME"]
    if "bench" not in name or name.startswith("test"):
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    return dict(db)


def prepare_database(db: dict[str, Any], reuse: bool) -> None:
    """Create the database (drop it first unless --reuse), before Django connects."""
    import psycopg
    from psycopg import sql

    conninfo = psycopg.conninfo.make_conninfo(
        host=str(db.get("HOST") or "127.0.0.1"),
        port=str(db.get("PORT") or 5432),
        user=str(db.get("USER") or "postgres"),
        password=str(db.get("PASSWORD") or ""),
        dbname="postgres",
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
        ).fetchone()
        if exists and not reuse:
            print(f"Dropping database {db['NAME']} (no --reuse) ...", flush=True)
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(db["NAME"])))
            exists = None
        if not exists:
            print(f"Creating database {db['NAME']} ...", flush=True)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))


@dataclass
class Kind:
    name: str
    inputs: Callable[[random.Random], tuple[str, int | None]]  # (url, expected contact pk)
    exact: bool = False  # the expected contact must be on the page
    times_ns: list[int] = field(default_factory=list)
    db_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)
    slow: list[tuple[int, str]] = field(default_factory=list)
    hits: int = 0
    checked: int = 0
    bad_status: int = 0
    queries: list[int] = field(default_factory=list)


def code_version() -> str:
    """The commit measured, and whether the working tree differs from it."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)  # nearest-rank percentile
    return ordered[rank]


def main() -> None:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    db = configure_environment()
    prepare_database(db, args.reuse)

    import django

    django.setup()

    from urllib.parse import urlencode

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from preferences.models import Contact

    assert not settings.DEBUG
    print(f"Database: {connection.settings_dict['NAME']}", flush=True)
    print(f"Code: {code_version()}", flush=True)

    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    print(f"migrate: {time.perf_counter() - started:.1f} s", flush=True)

    existing = Contact.objects.count()
    seed_seconds: float | None = None
    if args.reuse and existing >= args.contacts:
        print(f"Reusing {existing:,} contacts (--reuse); nothing seeded.", flush=True)
        # Still make sure the demo users and categories exist.
        call_command("seed_demo", contacts=0, verbosity=0)
    else:
        missing = args.contacts - existing
        print(f"Seeding {missing:,} contacts (have {existing:,}) ...", flush=True)
        started = time.perf_counter()
        call_command("seed_demo", contacts=missing, batch=args.seed_batch)
        seed_seconds = time.perf_counter() - started
        print(
            f"Seed time: {seed_seconds:.1f} s for {missing:,} contacts "
            f"(seed_demo --batch {args.seed_batch})",
            flush=True,
        )

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    vacuum_seconds = time.perf_counter() - started
    print(f"VACUUM ANALYZE: {vacuum_seconds:.1f} s", flush=True)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM preferences_contact),"
            " (SELECT count(*) FROM audit_auditentry),"
            " (SELECT count(DISTINCT contact_id) FROM audit_auditentry),"
            " pg_size_pretty(pg_total_relation_size('preferences_contact')),"
            " pg_size_pretty(pg_database_size(current_database())),"
            " version(), current_setting('shared_buffers'), current_setting('work_mem'),"
            " current_setting('jit')"
        )
        n_contacts, n_audit, n_with_history, contact_size, db_size, pg_version, sb, wm, jit = (
            cursor.fetchone()
        )
        cursor.execute("SELECT min(id), max(id) FROM preferences_contact")
        min_id, max_id = cursor.fetchone()
    print(
        f"{n_contacts:,} contacts ({contact_size} with indexes), {n_audit:,} audit entries "
        f"on {n_with_history:,} contacts; database {db_size}.\n"
        f"{pg_version.split(',')[0]}; shared_buffers={sb} work_mem={wm} jit={jit}",
        flush=True,
    )

    # ---- inputs -------------------------------------------------------------------------
    rng = random.Random(args.seed)
    pool_size = (args.requests + args.warmup + args.query_pass) * 4
    ids = rng.sample(range(min_id, max_id + 1), min(pool_size, max_id - min_id + 1))
    pool = list(
        Contact.objects.filter(pk__in=ids).values(
            "pk", "first_name", "last_name", "email", "phone", "salesforce_id", "ascend_id"
        )
    )
    with_phone = [c for c in pool if c["phone"]]
    with connection.cursor() as cursor:
        # Contacts with a history (a sample of audit entries, so contacts with more entries
        # come up more often), and separately contacts with the longest ones (3+ entries).
        cursor.execute(
            "SELECT contact_id FROM audit_auditentry TABLESAMPLE SYSTEM (2) REPEATABLE (%s)"
            " WHERE contact_id IS NOT NULL LIMIT %s",
            [args.seed, pool_size],
        )
        with_history = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT setseed(%s)", [1 / (abs(args.seed) + 2)])
        cursor.execute(
            "SELECT contact_id FROM audit_auditentry WHERE contact_id IS NOT NULL"
            " GROUP BY contact_id HAVING count(*) >= 3 ORDER BY random() LIMIT %s",
            [pool_size],
        )
        long_history = [row[0] for row in cursor.fetchall()]

    def search(q: str, pk: int | None = None) -> tuple[str, int | None]:
        return "/contacts/?" + urlencode({"q": q}), pk

    def email_exact(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(c["email"], c["pk"])

    def email_prefix(r: random.Random) -> tuple[str, int | None]:
        # What a specialist types before the address is complete: "local@" plus 0-3 letters.
        c = r.choice(pool)
        local, domain = c["email"].split("@", 1)
        return search(f"{local}@{domain[: r.randint(0, 3)]}", c["pk"])

    def email_start(r: random.Random) -> tuple[str, int | None]:
        # The start of an address without "@" ("mary.garc"): a one-word search, which
        # matches names by fragment and emails by prefix.
        c = r.choice(pool)
        local = c["email"].split("@", 1)[0]
        return search(local[: r.randint(min(len(local), 6), len(local))], c["pk"])

    def surname_piece(r: random.Random) -> tuple[str, int | None]:
        last = r.choice(pool)["last_name"].lower()
        size = min(len(last), r.randint(3, 5))
        start = r.randint(0, len(last) - size)
        return search(last[start : start + size])

    def surname(r: random.Random) -> tuple[str, int | None]:
        return search(r.choice(pool)["last_name"])

    def first_and_piece(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(f"{c['first_name'].lower()} {c['last_name'][: r.randint(3, 4)].lower()}")

    def full_name(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(f"{c['first_name']} {c['last_name']}")

    def sf18(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(c["salesforce_id"], c["pk"])

    def sf15(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(c["salesforce_id"][:15], c["pk"])

    def phone(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(with_phone)
        stored = c["phone"]  # "+1 (303) 555-1234"
        digits = "".join(ch for ch in stored if ch.isdigit())[1:]
        typed = r.choice(
            [
                stored,
                f"({digits[:3]}) {digits[3:6]}-{digits[6:]}",
                f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
                digits,
            ]
        )
        return search(typed, c["pk"])

    def ascend(r: random.Random) -> tuple[str, int | None]:
        c = r.choice(pool)
        return search(c["ascend_id"], c["pk"])

    def page_any(r: random.Random) -> tuple[str, int | None]:
        pk = r.choice(pool)["pk"]
        return f"/contacts/{pk}/", pk

    def page_history(r: random.Random) -> tuple[str, int | None]:
        pk = r.choice(with_history)
        return f"/contacts/{pk}/", pk

    def page_long_history(r: random.Random) -> tuple[str, int | None]:
        pk = r.choice(long_history)
        return f"/contacts/{pk}/", pk

    kinds = [
        Kind("email exact", email_exact, exact=True),
        Kind("email prefix (local@do)", email_prefix, exact=True),
        Kind("email start, no @", email_start),
        Kind("name: surname piece 3-5", surname_piece),
        Kind("name: full surname", surname),
        Kind("name: first + surname 3-4", first_and_piece),
        Kind("name: first last", full_name),
        Kind("salesforce id 18", sf18, exact=True),
        Kind("salesforce id 15", sf15, exact=True),
        Kind("phone", phone, exact=True),
        Kind("ascend id", ascend, exact=True),
        Kind("contact page (random)", page_any, exact=True),
        Kind("contact page (history)", page_history, exact=True),
        Kind("contact page (3+ entries)", page_long_history, exact=True),
    ]

    # ---- client -------------------------------------------------------------------------
    user = get_user_model().objects.get(username=SPECIALIST)
    client = Client(SERVER_NAME="localhost")  # ALLOWED_HOSTS has no "testserver"
    client.force_login(user)

    db_time = [0]

    def timed_execute(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return execute(sql, params, many, context)
        finally:
            db_time[0] += time.perf_counter_ns() - t0

    def request(kind: Kind, url: str, expected: int | None) -> int:
        db_time[0] = 0
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        with connection.execute_wrapper(timed_execute):
            response = client.get(url)
        elapsed = time.perf_counter_ns() - t0
        kind.cpu_ns.append(time.thread_time_ns() - c0)
        kind.db_ns.append(db_time[0])
        if response.status_code != 200:
            kind.bad_status += 1
        elif kind.exact and expected is not None:
            kind.checked += 1
            if f"/contacts/{expected}/".encode() in response.content:
                kind.hits += 1
        return elapsed

    # Warm-up: every kind, interleaved, so caches, templates and the connection are warm.
    warm = random.Random(args.seed + 1)
    for _ in range(args.warmup):
        for kind in kinds:
            url, pk = kind.inputs(warm)
            client.get(url)

    load_before = os.getloadavg()
    measure = random.Random(args.seed + 2)
    print(f"\nMeasuring {args.requests} requests per kind ...", flush=True)
    # Round-robin over the kinds, so a change of load on the machine during the run hits
    # every kind alike instead of whichever kind happens to be measured at that moment.
    for _ in range(args.requests):
        for kind in kinds:
            url, pk = kind.inputs(measure)
            elapsed = request(kind, url, pk)
            kind.times_ns.append(elapsed)
            kind.slow.append((elapsed, url))
    for kind in kinds:
        kind.slow = sorted(kind.slow, reverse=True)[: args.slowest]
    load_after = os.getloadavg()

    # Query counts on a separate pass (CaptureQueriesContext turns the debug cursor on).
    count_rng = random.Random(args.seed + 3)
    for kind in kinds:
        for _ in range(args.query_pass):
            url, _pk = kind.inputs(count_rng)
            with CaptureQueriesContext(connection) as ctx:
                client.get(url)
            kind.queries.append(len(ctx.captured_queries))

    # ---- report -------------------------------------------------------------------------
    header = (
        f"{'kind':<28}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  {'p95<50':<7}"
        f"{'found':>7}{'non-200':>9}{'queries':>9}"
        f"  |{'db p50':>8}{'db p95':>8}{'cpu p50':>9}{'cpu p95':>9}"
    )
    print()
    if seed_seconds is not None:
        print(
            f"Seed time: {seed_seconds:.1f} s ({args.contacts - existing:,} contacts, "
            f"seed_demo --batch {args.seed_batch}); "
            f"VACUUM ANALYZE {vacuum_seconds:.1f} s"
        )
    else:
        print(f"Seed time: reused ({n_contacts:,} contacts); VACUUM ANALYZE {vacuum_seconds:.1f} s")
    print(header)
    print("-" * len(header))
    failed = []
    worst_p95 = 0.0
    for kind in kinds:
        ms = [t / 1e6 for t in kind.times_ns]
        p95 = percentile(ms, 95)
        worst_p95 = max(worst_p95, p95)
        ok = p95 < TARGET_P95_MS and kind.bad_status == 0
        if not ok:
            failed.append(kind.name)
        found = f"{100 * kind.hits / kind.checked:.0f}%" if kind.checked else "-"
        q_lo, q_hi = min(kind.queries), max(kind.queries)
        queries = f"{q_lo}" if q_lo == q_hi else f"{q_lo}-{q_hi}"
        print(
            f"{kind.name:<28}{len(ms):>5}{statistics.median(ms):>9.1f}{p95:>9.1f}{max(ms):>9.1f}"
            f"  {'PASS' if ok else 'FAIL':<7}{found:>7}{kind.bad_status:>9}{queries:>9}"
            f"  |{statistics.median(kind.db_ns) / 1e6:>8.1f}"
            f"{percentile([t / 1e6 for t in kind.db_ns], 95):>8.1f}"
            f"{statistics.median(kind.cpu_ns) / 1e6:>9.1f}"
            f"{percentile([t / 1e6 for t in kind.cpu_ns], 95):>9.1f}"
        )
    print(
        "\n'db' = wall time inside cursor.execute (SQL round trips incl. the session/user/"
        "permission queries);\n'cpu' = CPU time of this Python thread (Django + templates), "
        "i.e. what load on the machine cannot inflate."
    )
    print(
        "Load average (1/5/15 min) before measuring: "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after: "
        + "/".join(f"{x:.2f}" for x in load_after)
        + f" on {os.cpu_count()} CPUs"
    )
    print()
    print("Slowest inputs per kind:")
    for kind in kinds:
        slow = ", ".join(f"{t / 1e6:.1f} ms {url}" for t, url in kind.slow)
        print(f"  {kind.name:<28}{slow}")
    print()
    print("Overall:", "PASS" if not failed else f"FAIL ({', '.join(failed)})")
    print(
        f"BENCH contacts contacts={n_contacts} kinds={len(kinds)} "
        f"worst_p95_ms={worst_p95:.1f} target_p95_ms={TARGET_P95_MS:.0f} failed={len(failed)}"
    )


if __name__ == "__main__":
    main()
