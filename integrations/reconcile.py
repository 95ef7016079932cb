"""Nightly reconciliation: what Salesforce, Ascend and the app's own data hold, compared with
the app, and every discrepancy kept until it is resolved (docs/design.md, "Reconciliation").

A target's reconcile function reads everything its system holds (Salesforce through a Bulk
API 2.0 query, Ascend from its nightly file) into RemoteRows, page by page; each page is
COPYed into a temporary table, so memory stays flat however many contacts there are, and
no transaction is open while the system is read. The comparison is then one set of SQL
statements: the app's state per contact (opt-outs, categories) against the table.

A contact whose change is still on its way (its sync mark for that system is not settled
before the moment the external data describes) is not judged tonight: a change in flight is
not a discrepancy. A discrepancy seen again keeps its first-seen time; one no longer seen
is closed as disappeared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from integrations import core
from integrations.models import APP, DiscrepancyKind, ReconcileRun, Resolution
from lib.locks import AdvisoryLock

logger = logging.getLogger(__name__)

REMOTE = "reconcile_remote"
COMPARED = "reconcile_compared"


class ReconcileBusy(Exception):
    """Another reconciliation is running."""


class _Rows:
    """RemoteRows: buffered in memory up to a page, then COPYed into the temporary table."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, list[str], list[str] | None, int | None]] = []
        self.count = 0

    def add(
        self,
        key: str,
        *,
        opted_out: Iterable[str],
        categories: Iterable[str] | None = None,
        version: int | None = None,
    ) -> None:
        # Sorted by code point, as the SQL side sorts (COLLATE "C"), so the comparison is
        # array equality whatever the database's collation.
        self.pending.append(
            (
                key,
                sorted(opted_out),
                None if categories is None else sorted(categories),
                version,
            )
        )

    def flush(self) -> None:
        if not self.pending:
            return
        with connection.cursor() as cursor:
            copy_sql = f"COPY {REMOTE} (key, opted_out, categories, version) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for row in self.pending:
                    copy.write_row(row)
        self.count += len(self.pending)
        self.pending.clear()


@contextmanager
def _one_at_a_time() -> Iterator[None]:
    # Session-level: the reading of a system is network I/O, which must not run inside a
    # transaction; PostgreSQL drops the lock with the session if the process dies.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [int(AdvisoryLock.RECONCILE)])
        row = cursor.fetchone()
    if not row or not row[0]:
        raise ReconcileBusy("Another reconciliation is running; try again when it is done.")
    try:
        yield
    finally:
        with suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [int(AdvisoryLock.RECONCILE)])


def run(systems: Iterable[str] | None = None) -> list[ReconcileRun]:
    """Reconcile the named systems (default: every target that can be, and the app's own
    data), then refresh what the app last read from each target that asks for it."""
    wanted = set(systems) if systems is not None else None
    runs: list[ReconcileRun] = []
    with _one_at_a_time():
        for target in core.targets():
            if target.reconcile is None or not target.enabled:
                continue
            if wanted is None or target.name in wanted:
                runs.append(reconcile_target(target))
        if wanted is None or APP in wanted:
            runs.append(reconcile_app())
        for target in core.targets():
            chosen = wanted is None or target.name in wanted
            if target.refresh is not None and target.enabled and chosen:
                runs.append(refresh_target(target))
    return runs


def reconcile_target(target: core.Target) -> ReconcileRun:
    assert target.reconcile is not None
    run = ReconcileRun.objects.create(system=target.name, started_at=timezone.now())
    rows = _Rows()
    try:
        _create_remote_table()
        read = target.reconcile(rows)
        rows.flush()
        run.snapshot_at = read.snapshot_at
        run.detail = read.detail
        with transaction.atomic():
            _compare(target, run)
            _record(run, kinds=[DiscrepancyKind.DIFFERS, *_PRESENCE])
    except Exception as error:  # the system could not be read: nothing is closed tonight
        logger.exception("Reconciliation of %s failed", target.name)
        run.failed = True
        run.detail = f"{run.detail} Failed: {error}".strip()[:2000]
    finally:
        _drop(REMOTE, COMPARED)
    run.finished_at = timezone.now()
    run.save()
    return run


def reconcile_app() -> ReconcileRun:
    """The app's own data: an email address that several contacts share."""
    run = ReconcileRun.objects.create(system=APP, started_at=timezone.now())
    run.snapshot_at = run.started_at
    try:
        with transaction.atomic():
            _compare_duplicates(run)
            _record(run, kinds=[DiscrepancyKind.DUPLICATE_EMAIL])
    finally:
        _drop(COMPARED)
    run.finished_at = timezone.now()
    run.save()
    return run


def refresh_target(target: core.Target) -> ReconcileRun:
    assert target.refresh is not None
    run = ReconcileRun.objects.create(system=target.name, started_at=timezone.now())
    try:
        run.detail = target.refresh()
    except Exception as error:
        logger.exception("Refresh of %s failed", target.name)
        run.failed = True
        run.detail = f"Failed: {error}"[:2000]
    run.finished_at = timezone.now()
    run.save()
    return run


# --- SQL ---------------------------------------------------------------------------------------

_PRESENCE = [DiscrepancyKind.UNKNOWN_TO_US, DiscrepancyKind.UNKNOWN_TO_THEM]


def _create_remote_table() -> None:
    _drop(REMOTE, COMPARED)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE {REMOTE} "
            "(key text NOT NULL, opted_out text[] NOT NULL, categories text[], version bigint)"
        )


def _drop(*tables: str) -> None:
    with suppress(DatabaseError), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")


# The app's state per contact, as every system is compared with it: the channels opted out
# of and the active categories subscribed to, each sorted; and whether the contact's mark for
# the system was settled before the external data's moment (else: a change in flight).
_APP_STATE = """
    SELECT c.id, c.salesforce_id, c.ascend_id, c.{match_on} AS key,
           COALESCE(o.channels, '{{}}'::text[]) AS opted_out,
           COALESCE(s.keys, '{{}}'::text[]) AS categories,
           (sy.id IS NULL OR (sy.status = 'synced' AND sy.uncertain_since IS NULL
                              AND sy.synced_at < %(snapshot)s))
           AND (p.changed_at IS NULL OR p.changed_at < %(snapshot)s) AS settled
      FROM preferences_contact c
      LEFT JOIN (SELECT contact_id,
                        array_agg(channel::text ORDER BY channel COLLATE "C") AS channels
                   FROM preferences_channelpreference WHERE opted_out GROUP BY contact_id) o
        ON o.contact_id = c.id
      LEFT JOIN (SELECT contact_id, max(changed_at) AS changed_at
                   FROM preferences_channelpreference GROUP BY contact_id) p
        ON p.contact_id = c.id
      LEFT JOIN (SELECT sub.contact_id,
                        array_agg(cat.key::text ORDER BY cat.key COLLATE "C") AS keys
                   FROM preferences_subscription sub
                   JOIN preferences_emailcategory cat ON cat.id = sub.category_id AND cat.is_active
                  GROUP BY sub.contact_id) s
        ON s.contact_id = c.id
      LEFT JOIN preferences_contactsync sy ON sy.contact_id = c.id AND sy.target = %(target)s
     WHERE c.{match_on} <> '' AND (NOT %(active_only)s OR c.inactive_since IS NULL)
"""

_COMPARE = f"""
    CREATE TEMP TABLE {COMPARED} AS
    WITH app AS ({_APP_STATE})
    SELECT CASE
               WHEN app.id IS NULL THEN '{DiscrepancyKind.UNKNOWN_TO_US}'
               WHEN remote.key IS NULL THEN '{DiscrepancyKind.UNKNOWN_TO_THEM}'
               ELSE '{DiscrepancyKind.DIFFERS}'
           END AS kind,
           COALESCE(app.key, remote.key) AS key,
           app.id AS contact_id,
           COALESCE(app.settled, true) AS settled,
           jsonb_build_object(
               'app', CASE WHEN app.id IS NULL THEN NULL ELSE jsonb_build_object(
                   'opted_out', app.opted_out, 'categories', app.categories,
                   'salesforce_id', app.salesforce_id, 'ascend_id', app.ascend_id) END,
               'remote', CASE WHEN remote.key IS NULL THEN NULL ELSE jsonb_build_object(
                   'opted_out', remote.opted_out, 'categories', remote.categories,
                   'version', remote.version) END
           ) AS details
      FROM app
      FULL OUTER JOIN {REMOTE} remote ON remote.key = app.key
     WHERE app.id IS NULL OR remote.key IS NULL
        OR remote.opted_out <> app.opted_out
        OR (remote.categories IS NOT NULL AND remote.categories <> app.categories)
"""


def _compare(target: core.Target, run: ReconcileRun) -> None:
    if target.match_on not in ("salesforce_id", "ascend_id"):
        raise ValueError(f"{target.name}: cannot match contacts on {target.match_on!r}")
    params: dict[str, Any] = {
        "snapshot": run.snapshot_at,
        "target": target.name,
        "active_only": target.active_only,
    }
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {REMOTE}")  # a temporary table has no statistics otherwise
        cursor.execute(_COMPARE.format(match_on=target.match_on), params)
        cursor.execute(
            f"SELECT count(*) FROM {REMOTE} remote JOIN preferences_contact c "
            f"ON c.{target.match_on} = remote.key"
        )
        run.compared = cursor.fetchone()[0]


def _compare_duplicates(run: ReconcileRun) -> None:
    _drop(COMPARED)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE TEMP TABLE {COMPARED} AS
            SELECT '{DiscrepancyKind.DUPLICATE_EMAIL}'::text AS kind, email AS key,
                   min(id) AS contact_id, true AS settled,
                   jsonb_build_object('contacts', jsonb_agg(jsonb_build_object(
                       'id', id, 'name', trim(first_name || ' ' || last_name),
                       'salesforce_id', salesforce_id) ORDER BY id)) AS details
              FROM preferences_contact
             WHERE email <> ''
             GROUP BY email
            HAVING count(*) > 1
            """
        )
        cursor.execute("SELECT count(*) FROM preferences_contact")
        run.compared = cursor.fetchone()[0]


def _record(run: ReconcileRun, *, kinds: list[str]) -> None:
    """Upsert what was found (settled contacts only), close what is no longer seen (except
    contacts skipped tonight), and count both on the run."""
    params: dict[str, Any] = {
        "run": run.pk,
        "system": run.system,
        "now": run.started_at,
        "kinds": kinds,
    }
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT kind, count(*) FROM {COMPARED} WHERE settled GROUP BY kind")
        run.found = {kind: count for kind, count in cursor.fetchall()}
        cursor.execute(f"SELECT count(*) FROM {COMPARED} WHERE NOT settled")
        run.skipped = cursor.fetchone()[0]
        cursor.execute(
            f"""
            INSERT INTO integrations_discrepancy
                   (system, kind, key, contact_id, details, first_seen, last_seen, run_id,
                    resolution)
            SELECT %(system)s, kind, key, contact_id, details, %(now)s, %(now)s, %(run)s, ''
              FROM {COMPARED} WHERE settled
            ON CONFLICT (system, kind, key) WHERE resolved_at IS NULL
            DO UPDATE SET details = EXCLUDED.details, last_seen = EXCLUDED.last_seen,
                          contact_id = EXCLUDED.contact_id, run_id = EXCLUDED.run_id
            RETURNING xmax = 0
            """,
            params,
        )
        run.opened = sum(1 for (inserted,) in cursor.fetchall() if inserted)
        cursor.execute(
            f"""
            UPDATE integrations_discrepancy d
               SET resolved_at = %(now)s, resolution = '{Resolution.DISAPPEARED}'
             WHERE d.system = %(system)s AND d.kind = ANY(%(kinds)s)
               AND d.resolved_at IS NULL AND d.run_id <> %(run)s
               AND NOT EXISTS (SELECT 1 FROM {COMPARED} c
                                WHERE NOT c.settled AND c.key = d.key AND c.kind = d.kind)
            """,
            params,
        )
        run.closed = cursor.rowcount


def latest_runs() -> list[ReconcileRun]:
    """The newest run of each system, for the page's summary."""
    newest: dict[str, ReconcileRun] = {}
    for found in ReconcileRun.objects.order_by("-started_at")[:50]:
        newest.setdefault(found.system, found)
    return sorted(newest.values(), key=lambda found: found.system)


def nightly_counts(days: int = 30) -> list[tuple[datetime, dict[str, int]]]:
    """Per night (run start, in order), discrepancies found per kind across systems."""
    since = timezone.now() - timedelta(days=days)
    nights: dict[datetime, dict[str, int]] = {}
    for found in ReconcileRun.objects.filter(started_at__gte=since, failed=False).order_by(
        "started_at"
    ):
        night = timezone.localtime(found.started_at).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        counts = nights.setdefault(night, {})
        for kind, number in found.found.items():
            counts[kind] = counts.get(kind, 0) + number
    return list(nights.items())
