"""Server-side latency of the managers' audit log at ten million entries.

Run from the project root:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/preference_desk_auditbench \\
        .venv/bin/python benchmarks/bench_audit_log.py [--entries 10000000] [--reuse]

What it does:

1. Creates the benchmark database (without --reuse it is dropped and recreated), runs
   Django's migrate and `seed_demo --contacts 0` (demo users and categories), and adds
   --staff staff accounts (specialists, managers, system team).
2. Seeds --contacts contacts and --entries audit entries with COPY, with the triggers off
   (session_replication_role = replica) and the audit table's secondary indexes dropped and
   rebuilt afterwards. The entries are a realistic mix spread over --years years, in time
   order: opt-outs and category changes from staff, Salesforce and the email platform,
   consent-backed re-enrolments, bounces, escalations raised and resolved, sync failures
   and manual retries, Marketing Cloud re-subscribe requests and resubscribes, nightly
   Ascend files, bulk runs of thousands of opt-outs, and managers' reviews of most risky
   entries a few hours to days later. Every entry's before/after follows its contact's
   state, and the contacts' preferences, categories and versions end as the history says.
3. Computes the hash chain in Python (the same canonical text as the seal trigger's
   audit_entry_canonical(), checked against PostgreSQL on a sample) and COPYs it into
   audit_auditseal, so `manage.py verify_audit` can run on the result; fills the review
   queue (audit_pendingreview) with the risky entries nobody reviewed. VACUUM ANALYZE.
4. Signs in as the demo manager (force_login) and times requests made in-process with
   django.test.Client, like bench_contacts.py: perf_counter_ns around client.get, so the
   figure is Django's whole handling of the request (session, permissions, queries, the
   template, the review badge), without network. DEBUG is off.
   Page 1 and page 200 (the keyset cursor of the 200th page, found beforehand) of the log
   unfiltered, by a staff member (a random one per request), and by kind of action
   (re-enrolment: one action; escalation: raised or resolved; bulk: action or source bulk).
   Further rows (date range, contact, note search, unreviewed) are for information.
5. Prints n, p50, p95, max per row, PASS/FAIL against p95 < 100 ms (the rows the issue
   names), the queries per request, db and cpu time split as bench_contacts.py does, and
   with --explain the plan of each row's page query (EXPLAIN ANALYZE, BUFFERS).

The database name must contain "bench": the script drops and recreates it.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_contacts import code_version, percentile, prepare_database  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/preference_desk_auditbench"
TARGET_P95_MS = 100.0
MANAGER = "manager@demo.test"
PAGE = 50
DEEP_PAGE = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument(
        "--contacts", type=int, default=None, help="default: one per ten entries (min 1,000)"
    )
    parser.add_argument("--staff", type=int, default=40, help="staff accounts besides the demo's")
    parser.add_argument("--years", type=float, default=3.0, help="the history's time span")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database if it has enough entries"
    )
    parser.add_argument("--requests", type=int, default=200, help="measured requests per row")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per row")
    parser.add_argument("--query-pass", type=int, default=5, help="requests per row counted")
    parser.add_argument("--explain", action="store_true", help="print each row's query plan")
    parser.add_argument("--seed", type=int, default=11, help="random seed")
    return parser.parse_args()


def configure_environment() -> dict[str, Any]:
    os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ["DEBUG"] = "false"  # no query logging, production code paths
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-" + "x" * 40)
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


# ---- the seal chain, as PostgreSQL writes it ----------------------------------------------


def _jsonb_order(value: Any) -> Any:
    """jsonb keeps object keys ordered by length, then bytes; its text output follows that."""
    if isinstance(value, dict):
        return {
            k: _jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k))
        }
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    return value


def _jsonb_text(value: Any) -> str:
    return json.dumps(_jsonb_order(value), ensure_ascii=False, separators=(", ", ": "))


def canonical(row: tuple[Any, ...]) -> str:
    """audit_entry_canonical(entry) for an audit row as the seeder COPYs it (see AUDIT_COLUMNS)."""
    (
        pk,
        created_at,
        actor_id,
        label,
        source,
        action,
        contact_id,
        version,
        channels,
        before,
        after,
        note,
        consent_id,
        reviews_id,
        bulk_run_id,
    ) = row
    stamp = created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return _jsonb_text(
        [
            pk,
            stamp,
            actor_id,
            label,
            source,
            action,
            contact_id,
            version,
            channels,
            json.loads(before),
            json.loads(after),
            note,
            consent_id,
            reviews_id,
            bulk_run_id,
            None,  # resubscribe_request_id
        ]
    )


# ---- the history ----------------------------------------------------------------------------

AUDIT_COLUMNS = (
    "id, created_at, actor_id, actor_label, source, action, contact_id, contact_version, "
    "channels, before, after, note, consent_id, reviews_id, bulk_run_id"
)
CATEGORY_KEYS = ["newsletter", "events", "giving", "athletics", "research"]
NOTES = {
    "staff_out": [
        "Called and asked to stop all email.",
        "Replied to the spring appeal asking to be removed from our lists.",
        "Asked by email to be taken off every list.",
        "Wrote in after the reunion mailing: no more email please.",
        "Phoned the advancement office, upset about the number of appeals.",
    ],
    "platform_out": [
        "Unsubscribed through the email footer link.",
        "Spam complaint reported by the email platform.",
        "Unsubscribed in the profile centre.",
        "Group opt-out from the email platform.",
    ],
    "salesforce_out": ["HasOptedOutOfEmail ticked in Salesforce.", "DoNotCall set in Salesforce."],
    "phone_out": ["Asked not to be called for phonathon.", "Requested no phone calls."],
    "categories": [
        "Re-checked categories the contact asked for.",
        "Wants the newsletter only.",
        "Added events after the reunion.",
        "Category fields changed in Salesforce.",
    ],
    "re_enrolment": [
        "Called to be added back to the newsletter; confirmed by phone.",
        "Emailed asking to receive event invitations again.",
        "Signed the form at the reunion to get email again.",
    ],
    "bounce": ["Hard bounce reported by the email platform.", "Repeated soft bounces."],
    "escalation": [
        "Not sure: the contact asked twice with different answers.",
        "Caller claims to be the contact's executor; please decide.",
        "Contact wants only some appeals; not a category we have.",
    ],
    "resolved": ["Spoke to the contact: opt-out stands.", "Confirmed with Records; resolved."],
    "sync_failed": [
        "Salesforce refused the update: INVALID_FIELD: No such column 'Giving__c'",
        "Salesforce refused the update: FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "Salesforce refused the update: ENTITY_IS_DELETED",
    ],
    "sync_retry": ["Retry of the Salesforce sync after: INVALID_FIELD (field restored)"],
    "resubscribe_request": ["Held in the Alumni business unit: re-subscribe requested."],
    "resubscribe": ["Set back to Active in Marketing Cloud after the re-enrolment."],
    "review": ["Reviewed", "Checked the consent evidence.", "Bulk run agreed with Legal."],
}
# (action, weight); bulk runs, Ascend files and reviews are scheduled separately.
# About a third of opt-outs are followed by a re-enrolment, so at the end some 40 % of the
# contacts are opted out of email (with ten entries per contact).
MIX = [
    ("opt_out", 9.0),
    ("category_change", 62.0),
    ("re_enrolment", 3.5),
    ("bounce", 8.0),
    ("escalation", 3.0),
    ("sync_failed", 0.6),
    ("sync_retry", 0.3),
    ("resubscribe_request", 1.0),
    ("resubscribe", 0.5),
]
RISKY = {"re_enrolment", "bulk", "sync_retry", "resubscribe"}


def _state_json(email: bool, phone: bool, categories: tuple[str, ...], bounced: bool) -> str:
    return json.dumps(
        {
            "opted_out": {"email": email, "phone": phone},
            "categories": list(categories),
            "bounced": bounced,
        }
    )


@dataclass
class Staff:
    specialists: list[tuple[int, str]]
    managers: list[tuple[int, str]]
    system: list[tuple[int, str]]


@dataclass
class History:
    """Generates audit rows in id and time order, keeping each contact's state."""

    rng: random.Random
    staff: Staff
    contacts: int
    first_contact: int
    first_id: int
    first_consent: int
    start: datetime
    end: datetime
    total: int
    bulk_runs: list[int]
    # contact -> (email out, phone out, categories, bounced, version)
    state: dict[int, tuple[bool, bool, tuple[str, ...], bool, int]] = field(default_factory=dict)
    opted_out_pool: list[tuple[int, str]] = field(default_factory=list)
    consents: list[tuple[Any, ...]] = field(default_factory=list)
    reviews_due: list[tuple[float, int, str]] = field(default_factory=list)
    escalations_open: list[float] = field(default_factory=list)
    risky: int = 0
    reviewed: int = 0
    last_t: float = 0.0

    def __post_init__(self) -> None:
        self.next_id = self.first_id
        self.next_consent = self.first_consent
        self.weights = [w for _, w in MIX]
        self.actions = [a for a, _ in MIX]

    def _contact(self, usable: Callable[[int], bool] | None = None) -> int:
        """A random contact; with `usable`, one it accepts if a few draws find one."""
        for _ in range(8):
            contact = self.first_contact + self.rng.randrange(self.contacts)
            if usable is None or usable(contact):
                break
        return contact

    def _get(self, contact: int) -> tuple[bool, bool, tuple[str, ...], bool, int]:
        return self.state.get(contact, (False, False, (), False, 0))

    def rows(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        step = (self.end - self.start).total_seconds() / self.total
        # Bulk runs at even intervals through the history, each 2,000-20,000 opt-outs.
        bulk_at = [
            (self.total * (2 * n + 1) // (2 * len(self.bulk_runs)), run)
            for n, run in enumerate(self.bulk_runs)
        ]
        day = 86_400.0
        next_ascend = math.ceil(self.start.timestamp() / day) * day + 8 * 3600
        start = t = self.start.timestamp()
        made = 0
        while made < self.total:
            # Time follows the entry's place in the history, so the last entry is near now.
            t = max(t, start + (made + rng.random()) * step)
            while self.reviews_due and self.reviews_due[0][0] <= t and made < self.total:
                when, target, kind = heapq.heappop(self.reviews_due)
                yield self._review(when, target, kind)
                made += 1
            if made >= self.total:
                break
            if t >= next_ascend:
                yield self._system(next_ascend, "ascend_file", None, "Nightly Ascend change file.")
                next_ascend += day
                made += 1
            elif bulk_at and made >= bulk_at[0][0]:
                _, run = bulk_at.pop(0)
                size = min(self.total - made, rng.randint(2000, 20000), self.contacts // 10)
                for row in self._bulk(t, run, size):
                    yield row
                    made += 1
                t = self.last_t
            else:
                yield self._event(t, rng.choices(self.actions, self.weights)[0])
                made += 1

    def _row(
        self,
        t: float,
        actor: tuple[int, str] | None,
        label: str,
        source: str,
        action: str,
        contact: int | None,
        version: int | None,
        channels: list[str],
        before: str,
        after: str,
        note: str,
        consent: int | None = None,
        reviews: int | None = None,
        bulk_run: int | None = None,
    ) -> tuple[Any, ...]:
        pk = self.next_id
        self.next_id += 1
        # Time order follows id order, as when entries are written live (the log's date
        # filter relies on it): a row scheduled for earlier than the last one waits for it.
        t = max(t, self.last_t)
        self.last_t = t
        if action in RISKY:
            self.risky += 1
            # Most risky entries are reviewed within hours or days; some recent ones wait.
            settled = t < self.end.timestamp() - 5 * 86_400 or self.rng.random() < 0.5
            if settled and self.rng.random() < 0.92:
                due = t + self.rng.uniform(3600, 6 * 86_400)
                if due < self.end.timestamp():
                    heapq.heappush(self.reviews_due, (due, pk, action))
        return (
            pk,
            EPOCH + timedelta(seconds=t),
            actor[0] if actor else None,
            label,
            source,
            action,
            contact,
            version,
            channels,
            before,
            after,
            note,
            consent,
            reviews,
            bulk_run,
        )

    def _system(self, t: float, action: str, contact: int | None, note: str) -> tuple[Any, ...]:
        return self._row(t, None, "System", "system", action, contact, None, [], "{}", "{}", note)

    def _review(self, t: float, target: int, kind: str) -> tuple[Any, ...]:
        manager = self.rng.choice(self.staff.managers)
        self.reviewed += 1
        note = "Bulk run agreed with Legal." if kind == "bulk" else self.rng.choice(NOTES["review"])
        return self._row(
            t,
            manager,
            manager[1],
            "staff",
            "review",
            None,
            None,
            [],
            "{}",
            "{}",
            note,
            reviews=target,
        )

    def _change(
        self,
        t: float,
        contact: int,
        actor: tuple[int, str] | None,
        label: str,
        source: str,
        action: str,
        note: str,
        email: bool | None = None,
        phone: bool | None = None,
        categories: tuple[str, ...] | None = None,
        bounced: bool | None = None,
        consent: int | None = None,
        bulk_run: int | None = None,
    ) -> tuple[Any, ...]:
        e0, p0, c0, b0, v0 = self._get(contact)
        e1 = e0 if email is None else email
        p1 = p0 if phone is None else phone
        c1 = c0 if categories is None else categories
        if e1 and not e0:
            c1 = ()  # docs/design.md, rule 3
        b1 = b0 if bounced is None else bounced
        v1 = v0 + 1
        self.state[contact] = (e1, p1, c1, b1, v1)
        channels = [c for c, was, now in (("email", e0, e1), ("phone", p0, p1)) if was != now]
        if c1 != c0 or b1 != b0:
            channels = sorted({*channels, "email"})
        for channel, was, now in (("email", e0, e1), ("phone", p0, p1)):
            if now and not was:
                self.opted_out_pool.append((contact, channel))
        return self._row(
            t,
            actor,
            label,
            source,
            action,
            contact,
            v1,
            channels,
            _state_json(e0, p0, c0, b0),
            _state_json(e1, p1, c1, b1),
            note,
            consent=consent,
            bulk_run=bulk_run,
        )

    def _event(self, t: float, action: str) -> tuple[Any, ...]:
        rng = self.rng
        specialist = rng.choice(self.staff.specialists)
        if action == "re_enrolment" and self.opted_out_pool:
            n = rng.randrange(len(self.opted_out_pool))
            contact, channel = self.opted_out_pool[n]
            self.opted_out_pool[n] = self.opted_out_pool[-1]
            self.opted_out_pool.pop()
            email, phone, *_ = self._get(contact)
            if (channel == "email" and email) or (channel == "phone" and phone):
                consent = self.next_consent
                self.next_consent += 1
                asked = EPOCH + timedelta(seconds=t - rng.uniform(600, 3 * 86_400))
                when = EPOCH + timedelta(seconds=t)
                self.consents.append(
                    (
                        consent,
                        contact,
                        [channel],
                        rng.choice(["phone_call", "email", "in_person", "written_form"]),
                        asked,
                        True,
                        specialist[0],
                        when,
                    )
                )
                return self._change(
                    t,
                    contact,
                    specialist,
                    specialist[1],
                    "staff",
                    "re_enrolment",
                    rng.choice(NOTES["re_enrolment"]),
                    email=False if channel == "email" else None,
                    phone=False if channel == "phone" else None,
                    consent=consent,
                )
            action = "opt_out"
        if action == "re_enrolment":
            action = "opt_out"
        phone = rng.random() < 0.2
        if action == "opt_out":
            contact = self._contact(lambda c: not self._get(c)[1 if phone else 0])
        else:
            contact = self._contact(lambda c: not self._get(c)[0])
        if action == "opt_out":
            email_out, phone_out, *_ = self._get(contact)
            if (phone and phone_out) or (not phone and email_out):
                action = "category_change"
            else:
                roll = rng.random()
                if phone:
                    actor, label, source, note = (
                        specialist,
                        specialist[1],
                        "staff",
                        rng.choice(NOTES["phone_out"]),
                    )
                elif roll < 0.4:
                    actor, label, source, note = (
                        specialist,
                        specialist[1],
                        "staff",
                        rng.choice(NOTES["staff_out"]),
                    )
                elif roll < 0.75:
                    actor, label, source, note = (
                        None,
                        "Email platform",
                        "email_platform",
                        rng.choice(NOTES["platform_out"]),
                    )
                else:
                    actor, label, source, note = (
                        None,
                        "Salesforce",
                        "salesforce",
                        NOTES["salesforce_out"][0],
                    )
                return self._change(
                    t,
                    contact,
                    actor,
                    label,
                    source,
                    "opt_out",
                    note,
                    email=True if not phone else None,
                    phone=True if phone else None,
                )
        if action == "category_change":
            email_out, _, current, _, _ = self._get(contact)
            if email_out:
                action = "bounce"
            else:
                wanted = tuple(sorted(k for k in CATEGORY_KEYS if rng.random() < 0.35))
                if wanted == current:
                    wanted = tuple(sorted(set(current) ^ {rng.choice(CATEGORY_KEYS)}))
                if rng.random() < 0.5:
                    actor, label, source = specialist, specialist[1], "staff"
                else:
                    actor, label, source = None, "Salesforce", "salesforce"
                return self._change(
                    t,
                    contact,
                    actor,
                    label,
                    source,
                    "category_change",
                    rng.choice(NOTES["categories"]),
                    categories=wanted,
                )
        if action == "bounce":
            _, _, _, bounced, _ = self._get(contact)
            return self._change(
                t,
                contact,
                None,
                "Email platform",
                "email_platform",
                "bounce",
                rng.choice(NOTES["bounce"]),
                bounced=not bounced,
            )
        if action == "escalation":
            if self.escalations_open and rng.random() < 0.5:
                self.escalations_open.pop()
                manager = rng.choice(self.staff.managers)
                return self._row(
                    t,
                    manager,
                    manager[1],
                    "staff",
                    "escalation_resolved",
                    contact,
                    None,
                    [],
                    "{}",
                    "{}",
                    rng.choice(NOTES["resolved"]),
                )
            self.escalations_open.append(t)
            return self._row(
                t,
                specialist,
                specialist[1],
                "staff",
                "escalation",
                contact,
                None,
                [],
                "{}",
                "{}",
                rng.choice(NOTES["escalation"]),
            )
        if action == "sync_failed":
            return self._row(
                t,
                None,
                "Salesforce sync",
                "system",
                "sync_failed",
                contact,
                None,
                [],
                "{}",
                "{}",
                rng.choice(NOTES["sync_failed"]),
            )
        if action == "sync_retry":
            member = rng.choice(self.staff.system)
            return self._row(
                t,
                member,
                member[1],
                "staff",
                "sync_retry",
                contact,
                None,
                [],
                "{}",
                "{}",
                NOTES["sync_retry"][0],
            )
        if action == "resubscribe_request":
            return self._row(
                t,
                None,
                "Marketing Cloud",
                "system",
                "resubscribe_request",
                contact,
                None,
                ["email"],
                "{}",
                "{}",
                NOTES["resubscribe_request"][0],
            )
        member = rng.choice(self.staff.system)
        return self._row(
            t,
            member,
            member[1],
            "staff",
            "resubscribe",
            contact,
            None,
            ["email"],
            "{}",
            "{}",
            NOTES["resubscribe"][0],
        )

    def _bulk(self, t: float, run: int, size: int) -> Iterator[tuple[Any, ...]]:
        """A manager's bulk opt-out: the run's entry, then one entry per contact changed."""
        manager = self.rng.choice(self.staff.managers)
        note = "Country law: no marketing email to contacts in this country (bulk run)."
        yield self._row(
            t,
            manager,
            manager[1],
            "bulk",
            "bulk",
            None,
            None,
            ["email"],
            "{}",
            "{}",
            f"Bulk run {run}: {note}",
            bulk_run=run,
        )
        made = 1
        # The run's contacts: those not opted out of email among a slice of the contacts.
        first = self.rng.randrange(self.contacts)
        for n in range(self.contacts):
            if made >= size:
                break
            contact = self.first_contact + (first + n) % self.contacts
            if self._get(contact)[0]:
                continue
            t += self.rng.uniform(0.02, 0.2)
            yield self._change(
                t, contact, manager, manager[1], "bulk", "opt_out", note, email=True, bulk_run=run
            )
            made += 1


# ---- seeding ----------------------------------------------------------------------------------


def _copy(cursor: Any, table: str, columns: str, rows: Any) -> int:
    n = 0
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def _secondary_indexes(cursor: Any, table: str) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i"
        " WHERE i.tablename = %s AND NOT EXISTS ("
        "   SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        [table],
    )
    return list(cursor.fetchall())


def seed(args: argparse.Namespace, contacts: int) -> float:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from preferences.management.commands import seed_demo
    from preferences.models import BulkRun, EmailCategory, salesforce_id_18
    from preferences.roles import MANAGER as MANAGER_GROUP
    from preferences.roles import SPECIALIST, SYSTEM_TEAM

    started = time.perf_counter()
    rng = random.Random(args.seed)
    call_command("seed_demo", contacts=0, verbosity=0)
    User = get_user_model()
    groups = {
        name: Group.objects.get(name=name) for name in (SPECIALIST, MANAGER_GROUP, SYSTEM_TEAM)
    }
    staff = Staff([], [], [])
    demo = {u.email: u.pk for u in User.objects.filter(email__endswith="@demo.test")}
    staff.specialists.append((demo["specialist@demo.test"], "specialist@demo.test"))
    staff.managers.append((demo[MANAGER], MANAGER))
    staff.system.append((demo["system@demo.test"], "system@demo.test"))
    for n in range(args.staff):
        role = SPECIALIST if n % 8 < 6 else MANAGER_GROUP if n % 8 == 6 else SYSTEM_TEAM
        email = f"staff{n:03d}@bench.test"
        user = User(username=email, email=email)
        user.set_unusable_password()
        user.save()
        user.groups.set([groups[role]])
        bucket = {
            SPECIALIST: staff.specialists,
            MANAGER_GROUP: staff.managers,
            SYSTEM_TEAM: staff.system,
        }[role]
        bucket.append((user.pk, email))

    end = timezone.now() - timedelta(minutes=5)
    start = end - timedelta(days=365 * args.years)
    manager_id = staff.managers[0][0]
    runs = [
        BulkRun.objects.create(
            channel="email",
            criteria={"country": country},
            note=f"Country law: no marketing email ({country}).",
            state="done",
            created_by_id=manager_id,
            total=0,
        ).pk
        for country in ["CN", "RU", "IR", "KP", "SY", "CU"][: max(1, args.entries // 1_500_000)]
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM preferences_contact")
        first_contact = cursor.fetchone()[0] + 1
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM audit_auditentry")
        first_id = cursor.fetchone()[0] + 1
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM preferences_consent")
        first_consent = cursor.fetchone()[0] + 1
        cursor.execute("SELECT seq, hash FROM audit_auditseal ORDER BY seq DESC LIMIT 1")
        last = cursor.fetchone()
    history = History(
        rng=rng,
        staff=staff,
        contacts=contacts,
        first_contact=first_contact,
        first_id=first_id,
        first_consent=first_consent,
        start=start,
        end=end,
        total=args.entries,
        bulk_runs=runs,
    )
    seq, previous = (last[0], last[1]) if last else (0, "")
    sample_every = max(1, args.entries // 200)
    sample: dict[int, str] = {}
    seals: list[tuple[int, int, str]] = []

    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no triggers, no FK checks
        dropped = _secondary_indexes(cursor, "audit_auditentry") + _secondary_indexes(
            cursor, "audit_auditseal"
        )
        for name, _ in dropped:
            cursor.execute(f'DROP INDEX "{name}"')
        print(f"  dropped {len(dropped)} secondary indexes for the load", flush=True)

        def audit_rows() -> Iterator[tuple[Any, ...]]:
            nonlocal seq, previous
            t0 = time.perf_counter()
            for n, row in enumerate(history.rows(), 1):
                text = canonical(row)
                seq += 1
                previous = hashlib.sha256((previous + text).encode()).hexdigest()
                seals.append((row[0], seq, previous))
                if n % sample_every == 0:
                    sample[row[0]] = text
                if n % 1_000_000 == 0:
                    print(f"  {n:,} entries ({time.perf_counter() - t0:.0f} s)", flush=True)
                yield row

        batch = 100_000  # rows held for one COPY, then their seals
        rows = audit_rows()
        copied = 0
        while True:
            chunk = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= batch:
                    break
            if not chunk:
                break
            copied += _copy(cursor, "audit_auditentry", AUDIT_COLUMNS, chunk)
            _copy(cursor, "audit_auditseal", "entry_id, seq, hash", seals)
            seals.clear()
        print(f"  COPY audit_auditentry + seals: {copied:,} rows", flush=True)

        _copy(
            cursor,
            "preferences_consent",
            "id, contact_id, channels, method, obtained_at, attested, recorded_by_id, recorded_at",
            history.consents,
        )
        categories = dict(EmailCategory.objects.values_list("key", "pk"))

        def contact_rows() -> Iterator[tuple[Any, ...]]:
            for pk in range(first_contact, first_contact + contacts):
                first, last_name = rng.choice(seed_demo.FIRST), rng.choice(seed_demo.LAST)
                _, _, _, bounced, version = history.state.get(pk, (False, False, (), False, 0))
                yield (
                    pk,
                    first,
                    last_name,
                    f"{first}.{last_name}{pk}@{rng.choice(seed_demo.DOMAINS)}".lower(),
                    f"+1 ({rng.randint(201, 989)}) 555-{rng.randint(0, 9999):04d}",
                    salesforce_id_18("003" + "Ab" + seed_demo._base62(pk, 10)),
                    str(1_000_000_000 + pk * 3),
                    rng.choice(seed_demo.COUNTRIES),
                    bounced,
                    start if bounced else None,
                    version,
                    start,
                )

        _copy(
            cursor,
            "preferences_contact",
            "id, first_name, last_name, email, phone, salesforce_id, ascend_id, country, "
            "email_bounced, email_bounced_at, version, created_at",
            contact_rows(),
        )
        _copy(
            cursor,
            "preferences_channelpreference",
            "contact_id, channel, opted_out, changed_at, changed_by_id, source, note",
            (
                (pk, channel, True, start, None, "system", "Seeded by the audit benchmark.")
                for pk, (email, phone, *_) in history.state.items()
                for channel, out in (("email", email), ("phone", phone))
                if out
            ),
        )
        _copy(
            cursor,
            "preferences_subscription",
            "contact_id, category_id, subscribed_at",
            (
                (pk, categories[key], start)
                for pk, (_, _, cats, _, _) in history.state.items()
                for key in cats
            ),
        )
        cursor.execute("SET maintenance_work_mem = '1GB'")
        t0 = time.perf_counter()
        for _, definition in dropped:
            cursor.execute(definition)
        print(f"  rebuilt the indexes in {time.perf_counter() - t0:.0f} s", flush=True)
        cursor.execute(
            "INSERT INTO audit_pendingreview (entry_id) SELECT e.id FROM audit_auditentry e"
            " WHERE e.risky AND NOT EXISTS (SELECT 1 FROM audit_auditentry r"
            " WHERE r.reviews_id = e.id)"
        )
        pending = cursor.rowcount
        cursor.execute("SET session_replication_role = origin")
        for table in ("preferences_contact", "audit_auditentry", "preferences_consent"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        # The Python chain must be PostgreSQL's: compare the canonical text on a sample.
        cursor.execute(
            "SELECT e.id, audit_entry_canonical(e) FROM audit_auditentry e WHERE e.id = ANY(%s)",
            [list(sample)],
        )
        mismatched = [pk for pk, text in cursor.fetchall() if text != sample[pk]]
        if mismatched:
            raise SystemExit(
                f"canonical text differs from PostgreSQL's for entries {mismatched[:5]}"
            )
    print(
        f"  {history.risky:,} risky entries, {history.reviewed:,} reviews, {pending:,} awaiting"
        f" review; canonical text checked on {len(sample)} entries",
        flush=True,
    )
    return time.perf_counter() - started


# ---- measuring ----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    urls: Callable[[random.Random], str]
    required: bool = True
    times_ns: list[int] = field(default_factory=list)
    db_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)
    bad_status: int = 0


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
    from django.utils import timezone

    from audit.forms import LogFilterForm
    from audit.models import AuditEntry

    assert not settings.DEBUG
    print(f"Database: {connection.settings_dict['NAME']}")
    print(f"Code: {code_version()}")
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    print(f"migrate: {time.perf_counter() - started:.1f} s")

    contacts = args.contacts or max(1000, args.entries // 10)
    existing = AuditEntry.objects.count()
    seed_seconds: float | None = None
    if args.reuse and existing >= args.entries:
        print(f"Reusing {existing:,} audit entries (--reuse); nothing seeded.")
    else:
        print(f"Seeding {args.entries:,} audit entries on {contacts:,} contacts ...")
        seed_seconds = seed(args, contacts)
        print(f"Seed time: {seed_seconds:.0f} s")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        print(f"VACUUM ANALYZE: {time.perf_counter() - started:.0f} s")

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM audit_auditentry),"
            " (SELECT count(*) FROM audit_auditseal),"
            " (SELECT count(*) FROM audit_pendingreview),"
            " (SELECT count(*) FROM preferences_contact),"
            " pg_size_pretty(pg_total_relation_size('audit_auditentry')),"
            " pg_size_pretty(pg_database_size(current_database())), version(),"
            " current_setting('shared_buffers'), current_setting('work_mem'),"
            " current_setting('jit')"
        )
        n_entries, n_seals, n_pending, n_contacts, audit_size, db_size, pg, sb, wm, jit = (
            cursor.fetchone()
        )
        cursor.execute("SELECT action, count(*) FROM audit_auditentry GROUP BY 1 ORDER BY 2 DESC")
        mix = cursor.fetchall()
        cursor.execute("SELECT min(created_at), max(created_at) FROM audit_auditentry")
        first_at, last_at = cursor.fetchone()
    print(
        f"{n_entries:,} audit entries ({audit_size} with indexes), {n_seals:,} seals, "
        f"{n_pending:,} awaiting review, {n_contacts:,} contacts; database {db_size}.\n"
        f"From {first_at:%Y-%m-%d} to {last_at:%Y-%m-%d}. "
        f"{pg.split(',')[0]}; shared_buffers={sb} work_mem={wm} jit={jit}"
    )
    print("Mix: " + ", ".join(f"{action} {count:,}" for action, count in mix))

    # ---- inputs ---------------------------------------------------------------------------
    User = get_user_model()
    manager = User.objects.get(username=MANAGER)
    actors = list(
        AuditEntry.objects.filter(actor__isnull=False)
        .values_list("actor", flat=True)
        .distinct()
        .order_by("actor")
    )

    def deep_cursor(params: dict[str, Any]) -> tuple[int, int]:
        """(page, ?after= cursor) of page DEEP_PAGE, or of the last full page if fewer."""
        form = LogFilterForm(params)
        assert form.is_valid(), form.errors
        query = AuditEntry.objects.filter(form.common())
        ids: list[int] = []
        for branch in form.branches():
            ids += list(
                query.filter(branch)
                .order_by("-id")
                .values_list("id", flat=True)[: DEEP_PAGE * PAGE]
            )
        ids = sorted(set(ids), reverse=True)[: DEEP_PAGE * PAGE]
        page = min(DEEP_PAGE, len(ids) // PAGE)  # the deepest full page
        return (page, ids[(page - 1) * PAGE - 1]) if page > 1 else (1, ids[0] + 1)

    deep_actor = {actor: deep_cursor({"actor": actor}) for actor in actors}
    deepest = max(page for page, _ in deep_actor.values())
    deep_actors = [actor for actor, (page, _) in deep_actor.items() if page == deepest]
    deep = {kind: deep_cursor({"kind": kind}) for kind in ("re_enrolment", "escalation", "bulk")}
    deep["all"] = deep_cursor({})
    shallow = {k: page for k, (page, _) in deep.items() if page < DEEP_PAGE}
    if shallow or deepest < DEEP_PAGE:
        print(
            f"Fewer than {DEEP_PAGE} pages; the deep rows use the last full page: {shallow}, "
            f"staff member {deepest}"
        )

    contact_ids = list(
        AuditEntry.objects.filter(contact__isnull=False)
        .order_by("-id")
        .values_list("contact__salesforce_id", flat=True)[:2000]
    )
    today = timezone.localdate()

    def url(**params: Any) -> str:
        return "/audit/?" + urlencode({k: v for k, v in params.items() if v is not None})

    def old_week(r: random.Random) -> str:
        days = r.randint(60, int(365 * args.years) - 30)
        begin = today - timedelta(days=days)
        return url(start=begin.isoformat(), end=(begin + timedelta(days=6)).isoformat())

    rows = [
        Row("all, page 1", lambda r: url()),
        Row(f"all, page {deep['all'][0]}", lambda r: url(after=deep["all"][1])),
        Row("staff member, page 1", lambda r: url(actor=r.choice(actors))),
        Row(
            f"staff member, page {deepest}",
            lambda r: url(actor=(a := r.choice(deep_actors)), after=deep_actor[a][1]),
        ),
        Row("kind re-enrolment, p1", lambda r: url(kind="re_enrolment")),
        Row(
            f"kind re-enrolment, p{deep['re_enrolment'][0]}",
            lambda r: url(kind="re_enrolment", after=deep["re_enrolment"][1]),
        ),
        Row("kind escalation, p1", lambda r: url(kind="escalation")),
        Row(
            f"kind escalation, p{deep['escalation'][0]}",
            lambda r: url(kind="escalation", after=deep["escalation"][1]),
        ),
        Row("kind bulk, p1", lambda r: url(kind="bulk")),
        Row(
            f"kind bulk, p{deep['bulk'][0]}",
            lambda r: url(kind="bulk", after=deep["bulk"][1]),
        ),
        Row("last 7 days", lambda r: url(start=(today - timedelta(days=7)).isoformat()), False),
        Row("a week, 2 mo-3 y ago", old_week, False),
        Row("contact", lambda r: url(contact=r.choice(contact_ids)), False),
        Row("source email platform", lambda r: url(source="email_platform"), False),
        Row("channel phone", lambda r: url(channel="phone"), False),
        Row(
            "note search",
            lambda r: url(q=r.choice(["appeal", "reunion", "footer", "executor", "phonathon"])),
            False,
        ),
        Row("unreviewed", lambda r: url(unreviewed=1), False),
        Row(
            "re-enrol + staff member",
            lambda r: url(kind="re_enrolment", actor=r.choice(actors)),
            False,
        ),
    ]

    client = Client(SERVER_NAME="localhost")
    client.force_login(manager)
    db_time = [0]

    def timed_execute(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return execute(sql, params, many, context)
        finally:
            db_time[0] += time.perf_counter_ns() - t0

    warm = random.Random(args.seed + 1)
    for _ in range(args.warmup):
        for row in rows:
            client.get(row.urls(warm))

    load_before = os.getloadavg()
    measure = random.Random(args.seed + 2)
    print(f"\nMeasuring {args.requests} requests per row ...")
    for _ in range(args.requests):
        for row in rows:
            target = row.urls(measure)
            db_time[0] = 0
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            with connection.execute_wrapper(timed_execute):
                response = client.get(target)
            row.times_ns.append(time.perf_counter_ns() - t0)
            row.cpu_ns.append(time.thread_time_ns() - c0)
            row.db_ns.append(db_time[0])
            if response.status_code != 200:
                row.bad_status += 1
            else:
                row.entries.append(response.content.count(b"<tr data-action="))
    load_after = os.getloadavg()

    count_rng = random.Random(args.seed + 3)
    plans: dict[str, str] = {}
    for row in rows:
        for n in range(args.query_pass):
            with CaptureQueriesContext(connection) as ctx:
                client.get(row.urls(count_rng))
            row.queries.append(len(ctx.captured_queries))
            if args.explain and n == 0:
                page_sql = [q["sql"] for q in ctx.captured_queries if "LIMIT 51" in q["sql"]]
                if page_sql:
                    with connection.cursor() as cursor:
                        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + page_sql[0])
                        plans[row.name] = "\n".join(r[0] for r in cursor.fetchall())

    header = (
        f"{'row':<30}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  {'p95<100':<8}"
        f"{'rows':>6}{'non-200':>9}{'queries':>9}"
        f"  |{'db p50':>8}{'db p95':>8}{'cpu p50':>9}{'cpu p95':>9}"
    )
    print()
    print(f"Seed time: {seed_seconds:.0f} s" if seed_seconds is not None else "Seed time: reused")
    print(header)
    print("-" * len(header))
    failed = []
    worst_p95 = 0.0
    for row in rows:
        ms = [t / 1e6 for t in row.times_ns]
        p95 = percentile(ms, 95)
        if row.required:
            worst_p95 = max(worst_p95, p95)
        ok = p95 < TARGET_P95_MS and row.bad_status == 0
        verdict = ("PASS" if ok else "FAIL") if row.required else ("info" if ok else "slow")
        if row.required and not ok:
            failed.append(row.name)
        q_lo, q_hi = min(row.queries), max(row.queries)
        shown = statistics.median(row.entries) if row.entries else 0
        print(
            f"{row.name:<30}{len(ms):>5}{statistics.median(ms):>9.1f}{p95:>9.1f}{max(ms):>9.1f}"
            f"  {verdict:<8}{shown:>6.0f}{row.bad_status:>9}"
            f"{(str(q_lo) if q_lo == q_hi else f'{q_lo}-{q_hi}'):>9}"
            f"  |{statistics.median(row.db_ns) / 1e6:>8.1f}"
            f"{percentile([t / 1e6 for t in row.db_ns], 95):>8.1f}"
            f"{statistics.median(row.cpu_ns) / 1e6:>9.1f}"
            f"{percentile([t / 1e6 for t in row.cpu_ns], 95):>9.1f}"
        )
    print(
        "\n'rows' = median entries on the page (50 = a full page); 'db' = wall time inside "
        "cursor.execute; 'cpu' = this thread's CPU time (Django + templates)."
    )
    print(
        "Load average (1/5/15 min) before measuring: "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after: "
        + "/".join(f"{x:.2f}" for x in load_after)
        + f" on {os.cpu_count()} CPUs"
    )
    for name, plan in plans.items():
        print(f"\n--- {name}\n{plan}")
    print()
    print("Overall:", "PASS" if not failed else f"FAIL ({', '.join(failed)})")
    print(
        f"BENCH audit_log pages={len(rows)} worst_p95_ms={worst_p95:.1f} "
        f"target_p95_ms={TARGET_P95_MS:.0f} failed={len(failed)}"
    )


if __name__ == "__main__":
    main()
