"""Benchmark: the initial load (``manage.py load_contacts``) of a million contacts from the
Salesforce stand-in's Bulk API 2.0, killed half way and run again (docs/design.md,
"Initial load").

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_bench_load \\
        .venv/bin/python benchmarks/bench_initial_load.py [--contacts 1000000]

Target: both runs together in at most 300 s of wall time, with a peak RSS of at most 300 MB
in the load process (the larger of the two runs), and the rerun carrying on where the
killed run stopped: no result page read twice, except the one the kill interrupted.

What it does:

1. Drops and creates the database (its name must contain "bench"), migrates it and adds the
   email categories: an empty app, as at the university on day one.
2. Starts the Salesforce stand-in in a process of its own (``python -m standins.salesforce``)
   and loads it with --contacts contacts, 50,000 a request: names, emails in mixed case,
   phones, Ascend IDs; about 16 % opted out of email, 5 % of phone, each category ticked
   for 35 % of the others; --collisions of them given an Ascend ID an earlier contact has.
3. Runs ``manage.py load_contacts`` as a subprocess, polls its run (the ContactLoad row) and
   kills it with SIGKILL once --kill-at of the contacts are committed; runs it again to
   the end. Each run's peak RSS is the kernel's (``wait4``'s ru_maxrss), its seconds the
   subprocess's wall time (Django's start included).
4. Checks: every contact loaded once, with the planted opt-outs, starting-state audit
   entries and Ascend ID collisions; one query job per object; and, from the stand-in's
   call log, how often each job's result pages were read: the pages, plus at most the one
   the kill interrupted; the rerun read no page the first run had committed. Prints the
   figures; the last line is ``BENCH initial_load contacts=N seconds=S peak_rss_mb=M
   api_calls=C`` (S: both runs; C: API calls the stand-in answered during them).

Exit status 0 if both targets are met and every check passes.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from standin_process import StandInInfo, die_with_parent, salesforce_standin

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_bench_load"
TARGET_SECONDS = 300.0
TARGET_RSS_MB = 300.0
CHUNK = 50_000  # contacts per stand-in request
# The demo's categories (preferences/management/commands/seed_demo.py), as the stand-in's
# default Contact checkboxes.
CATEGORIES = [
    ("newsletter", "Alumni newsletter", "Newsletter__c"),
    ("events", "Events and reunions", "Events__c"),
    ("giving", "Giving and appeals", "Giving__c"),
    ("athletics", "Athletics", "Athletics__c"),
    ("research", "Research news", "Research_News__c"),
]
FIRST = ["Ada", "Bo", "Chiara", "Dmitri", "Eun-ji", "Farah", "Gustavo", "Hana", "Ines", "Jonas"]
LAST = ["Okafor", "Chen", "Rossi", "Ivanova", "Kim", "Haddad", "Silva", "Sato", "Moreau", "Berg"]
DOMAINS = ["Example.EDU", "alumni.example.edu", "mail.example.com", "Example.org"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=50_000, help="load_contacts --page-size")
    parser.add_argument("--writers", type=int, default=2, help="load_contacts --writers")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.5,
        help="fraction of the contacts committed when the first run is killed (0: no kill)",
    )
    parser.add_argument(
        "--collisions", type=int, help="contacts given another's Ascend ID (default: 0.01 %%)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="random seed for the data")
    args = parser.parse_args()
    args.collisions = args.contacts // 10_000 if args.collisions is None else args.collisions
    if args.contacts < 2 or not 0 <= args.kill_at < 1 or args.collisions >= args.contacts // 2:
        parser.error("--contacts >= 2, 0 <= --kill-at < 1, --collisions < half the contacts")
    return args


# ---- the environment and the database -------------------------------------------------------


def configure_environment() -> dict[str, Any]:
    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ["DEBUG"] = "false"  # no query logging, production code paths
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-" + "x" * 40)
    os.environ.setdefault("STATIC_MANIFEST", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    # A push request after each page must never reach a shared Redis.
    os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    import dj_database_url

    db = dict(dj_database_url.parse(os.environ["DATABASE_URL"]))
    name = str(db["NAME"])
    if "bench" not in name or name.startswith("test"):
        raise SystemExit(f"refusing to use database {name!r}: its name must contain 'bench'")
    return db


def _connect(db: dict[str, Any], dbname: str | None = None) -> Any:
    import psycopg

    conninfo = psycopg.conninfo.make_conninfo(
        host=str(db.get("HOST") or "127.0.0.1"),
        port=str(db.get("PORT") or 5432),
        user=str(db.get("USER") or "postgres"),
        password=str(db.get("PASSWORD") or ""),
        dbname=dbname or db["NAME"],
    )
    return psycopg.connect(conninfo, autocommit=True)


def prepare_database(db: dict[str, Any]) -> None:
    from psycopg import sql

    name = db["NAME"]
    with _connect(db, "postgres") as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, check=True
    )
    with _connect(db) as conn:
        for position, (key, name_, field_name) in enumerate(CATEGORIES):
            conn.execute(
                "INSERT INTO preferences_emailcategory "
                "(key, name, salesforce_field, position, is_active) VALUES (%s, %s, %s, %s, true)",
                [key, name_, field_name, position],
            )
    print(f"Database {name}: created and migrated ({time.perf_counter() - started:.0f} s)")


# ---- the stand-in -----------------------------------------------------------------------------


@dataclass
class Planted:
    contacts: int = 0
    email_out: int = 0
    phone_out: int = 0
    with_state: int = 0  # opted out of something or in a category: a starting state
    collisions: int = 0


def fill_standin(standin: StandInInfo, args: argparse.Namespace) -> Planted:
    from standins.salesforce import SalesforceStandInClient

    client = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.secret, standin.client_id
    )
    rng = random.Random(args.seed)
    colliding = set(rng.sample(range(args.contacts // 2, args.contacts), args.collisions))
    planted = Planted()
    started = time.perf_counter()
    for start in range(0, args.contacts, CHUNK):
        records = []
        for n in range(start, min(start + CHUNK, args.contacts)):
            first, last = FIRST[n % len(FIRST)], LAST[n * 7 % len(LAST)]
            email_out = rng.random() < 0.16
            phone_out = rng.random() < 0.05
            ticked = {name: rng.random() < 0.35 for _k, _n, name in CATEGORIES}
            # Another contact's Ascend ID: an earlier one's, which is loaded first.
            ascend = 3_000_000_000 + (n - args.contacts // 2 if n in colliding else n)
            record: dict[str, Any] = {
                "FirstName": first,
                "LastName": f"{last}{n}",
                "Email": f"{first}.{last}{n}@{DOMAINS[n % len(DOMAINS)]}",
                "Phone": f"+1 (303) 555-{n % 10_000:04d}" if n % 5 else "",
                "Ascend_Id__c": str(ascend),
                "HasOptedOutOfEmail": email_out,
                "DoNotCall": phone_out,
                **ticked,
            }
            records.append(record)
            planted.email_out += email_out
            planted.phone_out += phone_out
            planted.with_state += email_out or phone_out or any(ticked.values())
        client.add_contacts(records)
        planted.contacts += len(records)
    client.close()
    planted.collisions = len(colliding)
    print(
        f"Stand-in loaded: {planted.contacts:,} contacts ({planted.email_out:,} opted out of "
        f"email, {planted.phone_out:,} of phone, {planted.collisions:,} with another's Ascend "
        f"ID) in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return planted


# ---- the runs -------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    exit: int
    killed: bool
    rows_at_kill: int = 0
    output: list[str] = field(default_factory=list)


def loaded_rows(db: dict[str, Any]) -> int:
    with _connect(db) as conn:
        row = conn.execute(
            "SELECT progress FROM integrations_contactload ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return 0
    return sum(int(entry.get("rows", 0)) for entry in row[0].values())


def run_load(
    args: argparse.Namespace, db: dict[str, Any], env: dict[str, str], kill_at_rows: int | None
) -> Run:
    """One ``manage.py load_contacts``; killed (SIGKILL) once kill_at_rows are committed."""
    command = [
        sys.executable,
        "manage.py",
        "load_contacts",
        "--page-size",
        str(args.page_size),
        "--writers",
        str(args.writers),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    output: list[str] = []

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
            print(f"    | {line.rstrip()}", flush=True)

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    killed = False
    rows_at_kill = 0
    if kill_at_rows is not None:
        while process.poll() is None:
            rows = loaded_rows(db)
            if rows >= kill_at_rows:
                os.kill(process.pid, signal.SIGKILL)
                killed = True
                rows_at_kill = rows
                break
            time.sleep(0.1)
    # wait4 reaps the child and gives its own rusage: ru_maxrss is its peak RSS in KiB.
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    relay_thread.join(5)
    return Run(seconds, usage.ru_maxrss / 1024, process.returncode, killed, rows_at_kill, output)


def job_reads(calls: list[tuple[str, str]]) -> tuple[list[str], Counter[str]]:
    """From the stand-in's call log: the query jobs created (in order, as ids are not in the
    POST's path, they come from the status reads) and how many result pages of each were
    read."""
    jobs: list[str] = []
    pages: Counter[str] = Counter()
    for method, path in calls:
        parts = path.rstrip("/").split("/")
        if "query" not in parts or method != "GET":
            continue
        rest = parts[parts.index("query") + 1 :]
        if len(rest) == 1 and rest[0] not in jobs:
            jobs.append(rest[0])
        elif len(rest) == 2 and rest[1] == "results":
            pages[rest[0]] += 1
    return jobs, pages


# ---- main -----------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db = configure_environment()
    directory = Path(tempfile.mkdtemp(prefix="bench-initial-load-"))
    try:
        prepare_database(db)
        with salesforce_standin(directory) as standin:
            planted = fill_standin(standin, args)
            return measure_and_report(args, db, standin, planted)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_and_report(
    args: argparse.Namespace, db: dict[str, Any], standin: StandInInfo, planted: Planted
) -> int:
    from standins.salesforce import SalesforceStandInClient

    control = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.secret, standin.client_id
    )
    env = {
        **os.environ,
        "SALESFORCE_ENABLED": "true",
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_CLIENT_ID": standin.client_id,
        "SALESFORCE_CLIENT_SECRET": standin.secret,
        "SALESFORCE_CA_BUNDLE": standin.ca_path,
        "SALESFORCE_LEADS": "true",
        "SALESFORCE_PERSON_ACCOUNTS": "false",
    }
    calls_before = control.api_calls
    log_before = len(control.call_log)
    kill_at = math.ceil(args.contacts * args.kill_at) if args.kill_at else None
    print(f"\nRun 1: load_contacts, SIGKILL once {kill_at or '-'} contacts are committed")
    first = run_load(args, db, env, kill_at)
    committed = loaded_rows(db)
    calls_between = control.api_calls
    log_between = len(control.call_log)
    if first.killed:
        print(f"Run 1: killed at {first.rows_at_kill:,} rows committed, {first.seconds:.1f} s")
    else:
        print(f"Run 1: exit {first.exit} without a kill, {first.seconds:.1f} s")
    runs = [first]
    if first.killed or first.exit != 0:
        print("\nRun 2: load_contacts again (it resumes)")
        second = run_load(args, db, env, None)
        runs.append(second)
        print(f"Run 2: exit {second.exit}, {second.seconds:.1f} s")
    calls_after = control.api_calls
    calls = control.call_log
    control.close()
    first_calls, later_calls = calls[log_before:log_between], calls[log_between:]

    with _connect(db) as conn:
        contacts, distinct_ids, kinds = conn.execute(
            "SELECT count(*), count(DISTINCT salesforce_id), "
            "string_agg(DISTINCT kind, ',') FROM preferences_contact"
        ).fetchone()
        email_out, phone_out = conn.execute(
            "SELECT count(*) FILTER (WHERE channel = 'email'), "
            "count(*) FILTER (WHERE channel = 'phone') FROM preferences_channelpreference "
            "WHERE opted_out"
        ).fetchone()
        (entries,) = conn.execute(
            "SELECT count(*) FROM audit_auditentry WHERE action = 'starting_state'"
        ).fetchone()
        (held,) = conn.execute(
            "SELECT count(*) FROM preferences_contactsync WHERE target = 'salesforce' "
            "AND status = 'synced' AND synced_version = 1"
        ).fetchone()
        (no_ascend,) = conn.execute(
            "SELECT count(*) FROM preferences_contact WHERE ascend_id = ''"
        ).fetchone()
        load = conn.execute(
            "SELECT id, finished_at IS NOT NULL, progress, created, with_opt_outs, "
            "ascend_collisions, api_calls, seconds FROM integrations_contactload "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        (load_runs,) = conn.execute("SELECT count(*) FROM integrations_contactload").fetchone()
    _id, finished, progress, created, with_opt_outs, collisions, own_calls, own_seconds = load

    # The pages: each object's job read page by page; across both runs, every page once,
    # except at most the one the kill interrupted (read by run 1, not committed, read again).
    jobs, reads = job_reads(calls[log_before:])
    first_jobs, first_reads = job_reads(first_calls)
    later_jobs, later_reads = job_reads(later_calls)
    contact_job = progress.get("Contact", {}).get("job_id", "")
    contact_pages = int(progress.get("Contact", {}).get("pages", 0))
    expected_pages = max(1, math.ceil(args.contacts / args.page_size))
    committed_pages = math.ceil(committed / args.page_size) if first.killed else 0
    reread = reads[contact_job] - contact_pages
    in_flight = f"{committed_pages}..{committed_pages + args.writers}"
    rest = expected_pages - committed_pages
    # A job's status is read once, after it is created: run 2 created none for Contact.
    resumed_job = not first.killed or (contact_job in first_jobs and contact_job not in later_jobs)
    print()
    print(f"{'check':<56}{'found':>14}{'expected':>14}  result")
    checks: list[tuple[str, Any, Any, bool]] = []

    def check(name: str, found: Any, expected: Any, ok: bool | None = None) -> None:
        checks.append((name, found, expected, found == expected if ok is None else ok))

    check("contacts in the app", contacts, planted.contacts)
    check("distinct Salesforce ids", distinct_ids, planted.contacts)
    check("kinds", kinds, "contact")
    check("opted out of email", email_out, planted.email_out)
    check("opted out of phone", phone_out, planted.phone_out)
    check("starting_state audit entries", entries, planted.with_state)
    check("Salesforce marked as holding them", held, planted.with_state)
    check("Ascend ID collisions (counted)", collisions, planted.collisions)
    check("contacts without an Ascend ID", no_ascend, planted.collisions)
    check("contacts created (counted)", created, planted.contacts)
    check("created with opt-outs (counted)", with_opt_outs, "> 0", with_opt_outs > 0)
    check("load runs / finished", f"{load_runs} / {finished}", "1 / True")
    check("query jobs created", len(jobs), len(progress))
    check("Contact result pages committed", contact_pages, expected_pages)
    check(
        f"Contact pages read twice (in flight: <= {args.writers} writers)",
        reread,
        f"0..{args.writers}",
        0 <= reread <= args.writers,
    )
    check(
        "run 1: Contact pages read (committed, in flight)",
        first_reads[contact_job],
        in_flight,
        committed_pages <= first_reads[contact_job] <= committed_pages + args.writers,
    )
    check(
        "run 2: Contact pages read (none committed before)",
        later_reads[contact_job],
        rest,
        not first.killed or later_reads[contact_job] == rest,
    )
    check("run 2 carried on with run 1's Contact job", resumed_job, True)
    check("last run's exit status", runs[-1].exit, 0)
    for name, found, expected, ok in checks:
        print(f"{name:<56}{found!s:>14}{expected!s:>14}  {'PASS' if ok else 'FAIL'}")

    seconds = sum(run.seconds for run in runs)
    peak = max(run.peak_rss_mb for run in runs)
    api_calls = calls_after - calls_before
    print()
    for number, run in enumerate(runs, 1):
        print(
            f"Run {number}: {run.seconds:.1f} s wall, peak RSS {run.peak_rss_mb:.0f} MB"
            + (" (killed)" if run.killed else f", exit {run.exit}")
        )
    print(
        f"API calls answered by the stand-in: {api_calls} (run 1: {calls_between - calls_before}"
        f", run 2: {calls_after - calls_between}); counted by the load: {own_calls}; "
        f"its working seconds: {own_seconds:.1f}"
    )
    time_ok = seconds <= TARGET_SECONDS
    rss_ok = peak <= TARGET_RSS_MB
    checks_ok = all(ok for *_rest, ok in checks)
    print(
        f"Wall time:  {seconds:.1f} s, both runs (target <= {TARGET_SECONDS:.0f} s): "
        f"{'PASS' if time_ok else 'FAIL'}"
    )
    print(
        f"Peak RSS:   {peak:.0f} MB, the larger run (target <= {TARGET_RSS_MB:.0f} MB): "
        f"{'PASS' if rss_ok else 'FAIL'}"
    )
    print(f"Checks: {'PASS' if checks_ok else 'FAIL'}")
    print()
    print(
        f"BENCH initial_load contacts={contacts} seconds={seconds:.1f} "
        f"peak_rss_mb={peak:.0f} api_calls={api_calls}"
    )
    return 0 if time_ok and rss_ok and checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
