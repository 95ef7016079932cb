"""A bulk opt-out with a real worker killed half-way (issue 4, acceptance point 3).

Real Celery workers and beat (separate processes) on a private Redis, the HTTPS Salesforce
stand-in and the test database: a bulk opt-out of 5,000 contacts, the worker SIGKILLed when
about half the items are applied and a new one started; the run must end with exactly
5,000 changes and 5,000 audit entries, each contact's version bumped once, and every
contact synced to Salesforce, opted out there, with exactly one note Task per change.
"""

from __future__ import annotations

import re
import time
from typing import Any

from django.db.models import F

from audit.models import AuditAction, AuditEntry
from integrations.salesforce import sync as salesforce_sync
from preferences.bulk import jobs as bulk
from preferences.models import (
    BulkItem,
    BulkItemState,
    BulkRun,
    BulkRunState,
    Contact,
    ContactSync,
    SyncStatus,
)
from tests.reliability.conftest import (
    CeleryProcesses,
    RecordingStandIn,
    make_contacts,
    standin_mismatches,
    wait_for,
)
from tests.reliability.test_salesforce_sync import assert_one_task_per_change

CONTACTS = 5_000
# Each contact is one apply_change() (about 20 queries) and a commit: about 10-20 ms on a
# quiet machine, several times that on two cores shared with other test runs.
APPLY_TIMEOUT = 300
# A short lease, so the killed worker's run is taken over within seconds, and a resume
# tick every second (production: 60 s and 60 s).
BULK_ENV = {"BULK_LEASE_SECONDS": "3", "BULK_RESUME_SECONDS": "1"}
RUN_RECEIVED = r"Task preferences\.tasks\.run_bulk_change\[[^\]]+\] received"


def _applied(run: BulkRun) -> int:
    return BulkItem.objects.filter(run=run, state=BulkItemState.APPLIED).count()


def _changes(run: BulkRun) -> Any:
    return AuditEntry.objects.filter(bulk_run=run, contact__isnull=False)


def test_a_bulk_opt_out_of_5000_with_the_worker_killed_half_way_applies_each_contact_once(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    manager: Any,
) -> None:
    contacts = make_contacts(standin, CONTACTS)
    draft = bulk.draft_from_filters(actor=manager, channel="email", criteria={"country": "US"})
    assert bulk.preview(draft).count == CONTACTS
    # Committed here (the test is transactional): the run_bulk_change message is published
    # to the private Redis, where the worker started below finds it.
    run = bulk.confirm(
        run_id=draft.pk,
        actor=manager,
        note="Bulk opt-out: the mail is not allowed there.",
        expected_total=CONTACTS,
    )
    assert celery.redis.queue_length() == 1

    # Salesforce answers in half a second, as a real org may: while a push waits, the
    # changes made meanwhile gather and go in the next call (up to 200 a call).
    standin.fail("latency", seconds=0.5, path_contains="/composite")
    worker = celery.worker(concurrency=2, wait=False, **BULK_ENV)
    celery.beat(wait=False, **BULK_ENV)
    celery.wait_ready()
    started = time.monotonic()
    wait_for(
        lambda: _applied(run) >= CONTACTS // 2,
        APPLY_TIMEOUT,
        lambda: f"half the items applied; {_applied(run)} are",
        interval=0.1,
    )
    worker.kill()
    killed_at = time.monotonic()

    # Killed mid-run: every item is either applied with its change, or untouched.
    at_kill = _applied(run)
    assert CONTACTS // 2 <= at_kill < CONTACTS
    assert BulkRun.objects.get(pk=run.pk).state == BulkRunState.RUNNING
    assert _changes(run).count() == at_kill
    assert BulkItem.objects.filter(run=run, state=BulkItemState.PENDING).count() == (
        CONTACTS - at_kill
    )

    resumed_before = len(re.findall(RUN_RECEIVED, worker.log_text()))
    worker.start()  # the same worker command, a new process: the run resumes after its lease
    wait_for(
        lambda: BulkRun.objects.get(pk=run.pk).state == BulkRunState.DONE,
        APPLY_TIMEOUT,
        lambda: f"the run to finish; {_applied(run)} of {CONTACTS} applied",
        interval=0.25,
    )
    finished_at = time.monotonic()
    # Taken up again through resume_bulk_runs (the first message is still unacknowledged).
    assert len(re.findall(RUN_RECEIVED, worker.log_text())) > resumed_before

    # Exactly 5,000 changes and 5,000 audit entries: nothing applied twice, nothing lost.
    items = BulkItem.objects.filter(run=run)
    assert items.filter(state=BulkItemState.APPLIED).count() == CONTACTS
    assert items.filter(audit_entry__isnull=False).count() == CONTACTS
    changes = _changes(run)
    assert changes.count() == CONTACTS
    assert changes.filter(action=AuditAction.OPT_OUT, source="bulk", actor=manager).count() == (
        CONTACTS
    )
    assert changes.values("contact").distinct().count() == CONTACTS
    assert set(Contact.objects.values_list("version", flat=True)) == {1}
    assert sorted(items.values_list("audit_entry_id", flat=True)) == sorted(
        changes.values_list("pk", flat=True)
    )
    run_entries = AuditEntry.objects.filter(bulk_run=run, contact__isnull=True).order_by("id")
    assert [e.after["event"] for e in run_entries] == ["confirmed", "done"]
    assert run_entries.last().after == {  # type: ignore[union-attr]
        "event": "done",
        "applied": CONTACTS,
        "skipped": 0,
        "pending": 0,
    }

    # Each synced: every contact's Salesforce row reaches synced at its version, the
    # stand-in has each contact opted out, and one note Task per change.
    def behind() -> int:
        return (
            ContactSync.objects.filter(target=salesforce_sync.TARGET)
            .exclude(status=SyncStatus.SYNCED, synced_version=F("contact__version"))
            .count()
        )

    wait_for(lambda: behind() == 0, 90, lambda: f"every contact synced; {behind()} behind")
    calls = standin.composite_calls()
    assert ContactSync.objects.filter(
        target=salesforce_sync.TARGET, status=SyncStatus.SYNCED, synced_version=1
    ).count() == (CONTACTS)
    remote = standin.contacts()
    assert all(remote[c.salesforce_id]["HasOptedOutOfEmail"] is True for c in contacts)
    assert standin_mismatches(standin, contacts) == []
    assert_one_task_per_change(standin, contacts)
    print(  # the figures, shown with -s
        f"\nbulk: half applied after {killed_at - started:.1f} s, run done "
        f"{finished_at - killed_at:.1f} s after the kill, synced "
        f"{time.monotonic() - finished_at:.1f} s later, in {len(calls)} Salesforce calls"
    )
