"""Outbound and inbound Salesforce sync with real processes (issue 3, acceptance point 2).

Each test runs real Celery workers (prefork, separate processes) and real celery beat on a
private Redis, against the HTTPS Salesforce stand-in and the test database, and ends by
comparing the stand-in with the database: for every contact the email opt-out, do-not-call
and every category field equal the database's, and there is exactly one Task per change.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from audit.models import AuditAction, AuditEntry
from integrations.salesforce import inbound, sync
from preferences.models import Contact, ContactSync, SyncStatus
from preferences.services import apply_change, current_state
from standins.salesforce import API_USER_ID, INTEGRATION_USER_ID
from tests import factories
from tests.reliability.conftest import (
    CeleryProcess,
    CeleryProcesses,
    RecordingStandIn,
    RedisServer,
    make_contacts,
    standin_mismatches,
    wait_for,
)

SALESFORCE = sync.TARGET
TASK_EXTERNAL_ID = "Preference_Change_Id__c"


# --- helpers -----------------------------------------------------------------------------


def _behind(contacts: list[Contact]) -> list[str]:
    """Contacts whose Salesforce sync is not synced at their current version."""
    rows = ContactSync.objects.filter(target=SALESFORCE, contact__in=contacts).exclude(
        status=SyncStatus.SYNCED, synced_version=F("contact__version")
    )
    return [
        f"{row.contact_id}: {row.status} v{row.synced_version} ({row.last_error or 'no error'})"
        for row in rows.order_by("contact_id")
    ]


def wait_until_synced(contacts: list[Contact], timeout: float) -> None:
    def describe() -> str:
        behind = _behind(contacts)
        return f"every contact synced; {len(behind)} behind, e.g. {behind[:5]}"

    wait_for(lambda: not _behind(contacts), timeout, describe, interval=0.25)


def assert_standin_equals_database(standin: RecordingStandIn, contacts: list[Contact]) -> None:
    mismatches = standin_mismatches(standin, contacts)
    assert not mismatches, f"{len(mismatches)} contacts differ, e.g. {mismatches[:5]}"


def assert_one_task_per_change(standin: RecordingStandIn, contacts: list[Contact]) -> None:
    """Exactly one Task per preference change (audit entry with a contact version), keyed
    PD-<entry id>, on the right contact and carrying the note; no other Task."""
    entries = AuditEntry.objects.filter(contact__in=contacts, contact_version__isnull=False)
    expected = {
        f"PD-{pk}": (salesforce_id, note)
        for pk, salesforce_id, note in entries.values_list("pk", "contact__salesforce_id", "note")
    }
    tasks = standin.tasks()
    keys = [task[TASK_EXTERNAL_ID] for task in tasks]
    assert len(keys) == len(set(keys)) == len({task["Id"] for task in tasks})
    missing = sorted(set(expected) - set(keys))
    unexpected = sorted(set(keys) - set(expected))
    assert sorted(keys) == sorted(expected), (
        f"{len(keys)} Tasks for {len(expected)} changes; missing {missing[:5]}, "
        f"unexpected {unexpected[:5]}"
    )
    for task in tasks:
        who, note = expected[task[TASK_EXTERNAL_ID]]
        assert task["WhoId"] == who
        assert note in task["Description"]


def apply_varied_changes(contacts: list[Contact], actor: Any) -> None:
    """One change per contact, of four kinds, so every Salesforce field is exercised."""
    for i, contact in enumerate(contacts):
        kind = i % 4
        if kind == 0:
            change: dict[str, Any] = {"opt_out": {"email": True}}
        elif kind == 1:
            change = {"categories": ["newsletter", "events"]}
        elif kind == 2:
            change = {"opt_out": {"phone": True}}
        else:
            change = {"opt_out": {"phone": True}, "categories": ["giving"]}
        apply_change(
            contact=contact,
            actor=actor,
            source="staff",
            note=f"Change {i}: as the contact asked on the phone.",
            **change,
        )


def apply_varied_changes_in_parallel(contacts: list[Contact], actor: Any, threads: int = 4) -> None:
    """The same, from several threads (connections) at once: about half the time."""

    def apply(part: list[Contact]) -> None:
        try:
            apply_varied_changes(part, actor)
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(apply, [contacts[i::threads] for i in range(threads)]))


def _remote(standin: RecordingStandIn, contact: Contact) -> dict[str, Any]:
    record = standin.contact(contact.salesforce_id)
    assert record is not None
    return record


def _sync_row(contact: Contact) -> ContactSync:
    return ContactSync.objects.get(contact=contact, target=SALESFORCE)


def _count(process: CeleryProcess, pattern: str) -> int:
    return len(re.findall(pattern, process.log_text()))


SWEEP_SENT = r"Sending due task sweep-sync"
PUSH_RECEIVED = r"Task integrations\.tasks\.push\[[^\]]+\] received"
SYNC_PENDING_ON_PAGE = re.compile(r"<b>Salesforce</b>:\s*<span class=\"tag\">pending</span>")


# --- a. kill -9 mid-batch ----------------------------------------------------------------


def test_a_worker_killed_mid_batch_and_restarted_leaves_salesforce_equal_to_the_database(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
) -> None:
    contacts = make_contacts(standin, 1000)
    apply_varied_changes_in_parallel(contacts, specialist)
    assert celery.redis.queue_length() == 1000  # one push request queued per change

    # Salesforce answers slowly, so the worker is surely inside a batch when it dies.
    standin.fail("latency", seconds=3, path_contains="/composite")
    worker = celery.worker(concurrency=2, wait=False)
    celery.beat(wait=False)
    celery.wait_ready()
    wait_for(lambda: standin.received_composites() >= 1, 30, "the first composite call")
    in_flight = standin.received_composites() - len(standin.composite_calls())
    claimed = ContactSync.objects.filter(target=SALESFORCE, claim__isnull=False).count()
    killed_at = time.monotonic()
    worker.kill()
    assert in_flight >= 1, "the worker was killed between batches, not inside one"
    assert claimed >= 1
    assert ContactSync.objects.filter(target=SALESFORCE, status=SyncStatus.SYNCED).count() < 1000

    standin.clear_faults()
    celery.restart(worker)
    wait_until_synced(contacts, timeout=90)

    assert_standin_equals_database(standin, contacts)
    assert_one_task_per_change(standin, contacts)
    # The batch in flight when the worker died reached Salesforce (the stand-in finished
    # it), was never recorded, and was sent again once its lease ran out: a harmless repeat.
    calls = standin.composite_calls()
    in_flight_then = {i for call in calls if call.at < killed_at for i in call.contact_ids}
    sent_again = {i for call in calls if call.at > killed_at for i in call.contact_ids}
    assert in_flight_then and in_flight_then <= sent_again
    assert {i for call in calls for i in call.contact_ids} == {c.salesforce_id for c in contacts}
    assert ContactSync.objects.filter(target=SALESFORCE, status=SyncStatus.SYNCED).count() == 1000


# --- b. Redis down -----------------------------------------------------------------------


def test_b_changes_made_while_redis_is_down_are_committed_shown_pending_and_sent_when_it_returns(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
    client: Client,
) -> None:
    contacts = make_contacts(standin, 100)
    celery.worker(concurrency=2, wait=False)
    celery.beat(wait=False)
    celery.wait_ready()
    client.force_login(specialist)

    celery.redis.stop()
    for i, contact in enumerate(contacts):
        started = time.monotonic()
        response = client.post(
            reverse("preferences:update", args=[contact.pk]),
            {
                "version": str(contact.version),
                "opt_out_email": "on",
                "note": f"Asked by phone to stop all email (call {i}).",
            },
        )
        took = time.monotonic() - started
        assert response.status_code == 302, (i, response.status_code)
        assert response["Location"] == reverse("preferences:contact", args=[contact.pk])
        assert took < 5, f"request {i} took {took:.1f} s with the broker down"

    changed = Contact.objects.filter(pk__in=[c.pk for c in contacts])
    assert all(current_state(c).opted_out["email"] for c in changed)
    assert (
        AuditEntry.objects.filter(contact__in=contacts, action=AuditAction.OPT_OUT).count() == 100
    )
    assert (
        ContactSync.objects.filter(
            target=SALESFORCE, contact__in=contacts, status=SyncStatus.PENDING, synced_version=0
        ).count()
        == 100
    )
    for contact in contacts:
        page = client.get(reverse("preferences:contact", args=[contact.pk]))
        assert SYNC_PENDING_ON_PAGE.search(page.content.decode()), contact.pk
    assert standin.composite_calls() == []

    celery.redis.start()  # same port, empty: every queued message was lost
    wait_until_synced(contacts, timeout=90)

    assert_standin_equals_database(standin, contacts)
    assert_one_task_per_change(standin, contacts)
    page = client.get(reverse("preferences:contact", args=[contacts[0].pk]))
    assert not SYNC_PENDING_ON_PAGE.search(page.content.decode())


# --- c. transient errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status"),
    [("http_503", 503), ("unable_to_lock_row", 400), ("request_limit_exceeded", 403)],
)
def test_c_transient_errors_are_retried_with_growing_delays_until_every_change_lands(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
    fault: str,
    status: int,
) -> None:
    contacts = make_contacts(standin, 20)
    apply_varied_changes(contacts, specialist)
    # Every call fails for the first 6 s after the first one arrives (enough for at least
    # three failed attempts per contact).
    outage = 6.0
    standin.fail(
        fault,
        until=lambda: (
            standin.first_composite_at is not None
            and time.monotonic() >= standin.first_composite_at + outage
        ),
    )
    celery.worker(concurrency=2, wait=False)
    celery.beat(wait=False)
    celery.wait_ready()

    # A failed attempt leaves attempts, next_attempt_at and updated_at (when it failed) on
    # the row: the delay the app chose before the next attempt. Polled every 50 ms; the
    # shortest delay is 500 ms.
    delays: dict[int, dict[int, float]] = {c.pk: {} for c in contacts}

    def watch() -> bool:
        rows = ContactSync.objects.filter(target=SALESFORCE, contact__in=contacts)
        for pk, attempts, next_at, failed_at in rows.values_list(
            "contact_id", "attempts", "next_attempt_at", "updated_at"
        ):
            if attempts and next_at is not None:
                delays[pk].setdefault(attempts, (next_at - failed_at).total_seconds())
        return not _behind(contacts)

    wait_for(watch, 60, lambda: f"every change to land; {_behind(contacts)[:5]}", interval=0.05)

    assert_standin_equals_database(standin, contacts)
    assert_one_task_per_change(standin, contacts)
    assert all(_sync_row(c).attempts == 0 for c in contacts)  # reset by the success
    calls = standin.composite_calls()
    assert standin.first_composite_at is not None
    end_of_outage = standin.first_composite_at + outage
    for contact in contacts:
        attempts = [call for call in calls if contact.salesforce_id in call.contact_ids]
        # Failed while the outage lasted, then landed once: no attempt after the success.
        assert [a.status for a in attempts] == [status] * (len(attempts) - 1) + [200]
        assert len(attempts) >= 4, [(round(a.at - attempts[0].at, 2), a.status) for a in attempts]
        assert attempts[-2].at < end_of_outage <= attempts[-1].at + 0.05
        # Never earlier than the shortest delay the app may choose for that retry.
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
        for k, gap in enumerate(gaps, start=1):
            assert gap >= min(8.0, 2.0 ** (k - 1)) / 2, (contact.pk, gaps)
    # The delay chosen before retry k is random in [c/2, c], c = min(8, 1 * 2**(k-1))
    # seconds (SYNC_RETRY_BASE_SECONDS=1, SYNC_RETRY_MAX_SECONDS=8): the delays grow.
    assert {1, 2, 3} <= {k for chosen in delays.values() for k in chosen}, delays
    for pk, chosen in delays.items():
        assert chosen, f"no retry of contact {pk} was seen"
        for k, delay in chosen.items():
            ceiling = min(8.0, 2.0 ** (k - 1))
            assert ceiling / 2 <= delay <= ceiling, (pk, chosen)
        ordered = [chosen[k] for k in sorted(chosen)]
        assert ordered == sorted(ordered), (pk, chosen)
        if {1, 3} <= set(chosen):
            assert chosen[3] >= 2 * chosen[1], (pk, chosen)


# --- d. permanent per-record error --------------------------------------------------------


def test_d_a_permanent_error_fails_that_contact_with_salesforces_message_and_is_not_retried(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
    client: Client,
) -> None:
    contacts = make_contacts(standin, 5)
    refused = contacts[2]
    message = "No such column Newsletter__c on sobject of type Contact"
    standin.reject_record(refused.salesforce_id, "INVALID_FIELD", message)
    apply_varied_changes(contacts, specialist)
    celery.worker(concurrency=1, wait=False)  # one process: the first push takes all five
    beat = celery.beat(wait=False)
    celery.wait_ready()

    others = [c for c in contacts if c != refused]
    wait_until_synced(others, timeout=30)
    wait_for(
        lambda: _sync_row(refused).status == SyncStatus.FAILED,
        30,
        lambda: f"the refused contact to fail; its sync: {_sync_row(refused).__dict__}",
    )
    calls = standin.composite_calls()
    assert len(calls) == 1 and set(calls[0].contact_ids) == {c.salesforce_id for c in contacts}

    failed = _sync_row(refused)
    assert failed.last_error == f"INVALID_FIELD: {message}"
    assert failed.attempts == 1
    audit = AuditEntry.objects.get(contact=refused, action=AuditAction.SYNC_FAILED)
    assert message in audit.note
    client.force_login(specialist)
    page = client.get(reverse("preferences:contact", args=[refused.pk])).content.decode()
    assert re.search(
        r"<b>Salesforce</b>:\s*<span class=\"tag bad\">failed</span>\s*"
        + re.escape(escape(f"INVALID_FIELD: {message}")),
        page,
    ), "the contact page shows the failure with Salesforce's message"
    assert_standin_equals_database(standin, others)
    assert _remote(standin, refused)["DoNotCall"] is False  # refused: unchanged

    # No endless retry: while the sweeper ticks and the worker pushes a new change for
    # another contact, the refused contact is never sent again.
    sweeps = _count(beat, SWEEP_SENT)
    apply_change(
        contact=others[0],
        actor=specialist,
        source="staff",
        note="And no calls.",
        opt_out={"phone": True},
    )
    wait_until_synced(others, timeout=30)
    wait_for(lambda: _count(beat, SWEEP_SENT) >= sweeps + 10, 30, "ten more sweeper ticks")
    later_calls = standin.composite_calls()[1:]
    assert later_calls, "the new change was pushed"
    assert all(refused.salesforce_id not in call.contact_ids for call in later_calls)
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (SyncStatus.FAILED, 1)
    assert AuditEntry.objects.filter(contact=refused, action=AuditAction.SYNC_FAILED).count() == 1
    assert_standin_equals_database(standin, others)


# --- e. one contact, many changes, two workers ----------------------------------------------

CATEGORY_CHOICES = [["newsletter"], ["events", "giving"], [], ["athletics", "research"]]


def test_e_fifty_alternating_changes_with_two_workers_end_in_the_databases_final_state(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
) -> None:
    (contact,) = make_contacts(standin, 1)
    workers = [celery.worker(concurrency=1, wait=False) for _ in range(2)]
    celery.beat(wait=False)
    celery.wait_ready()

    pace = random.Random(3)
    for i in range(50):
        if i % 2 == 0:
            apply_change(
                contact=contact,
                actor=specialist,
                source="staff",
                note=f"Change {i}: stop.",
                opt_out={"email": True},
            )
        else:
            apply_change(
                contact=contact,
                actor=specialist,
                source="staff",
                note=f"Change {i}: back in.",
                opt_out={"email": False},
                categories=CATEGORY_CHOICES[(i // 2) % len(CATEGORY_CHOICES)],
                consent=factories.consent(),
            )
        # Spread the changes over a second or so, so pushes from both workers interleave
        # with them at every stage.
        time.sleep(pace.uniform(0, 0.04))

    contact.refresh_from_db()
    assert contact.version == 50
    wait_until_synced([contact], timeout=60)

    assert_standin_equals_database(standin, [contact])
    final = current_state(contact)
    assert final.opted_out["email"] is False
    assert final.categories == frozenset(CATEGORY_CHOICES[24 % len(CATEGORY_CHOICES)])
    assert_one_task_per_change(standin, [contact])
    assert len(standin.tasks()) == 50
    for worker in workers:
        assert _count(worker, PUSH_RECEIVED) > 0, f"{worker.name} took no push task"


# --- f. inbound ---------------------------------------------------------------------------


def test_f_an_unsubscribe_made_in_salesforce_is_applied_with_its_source_and_not_pushed_back(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
    client: Client,
) -> None:
    inbound, other = make_contacts(standin, 2)
    celery.worker(concurrency=2, wait=False)
    celery.beat(wait=False, SYNC_PULL_SECONDS="1")
    celery.wait_ready()
    # A staff change on another contact goes out as usual: this run does push.
    apply_change(
        contact=other, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )
    wait_until_synced([other], timeout=30)
    wait_for(lambda: standin.query_times(), 20, "the first inbound pull")

    standin.external_update(inbound.salesforce_id, HasOptedOutOfEmail=True)
    entry = wait_for(
        lambda: AuditEntry.objects.filter(contact=inbound).first(),
        30,
        "the inbound unsubscribe to be applied",
    )

    assert (entry.source, entry.actor_label, entry.action, entry.channels) == (
        "salesforce",
        "Salesforce",
        AuditAction.OPT_OUT,
        ["email"],
    )
    assert INTEGRATION_USER_ID in entry.note
    assert current_state(inbound).opted_out["email"] is True
    row = _sync_row(inbound)
    inbound.refresh_from_db()
    assert (row.status, row.synced_version) == (SyncStatus.SYNCED, inbound.version)

    # Later pulls read it again and find nothing new; nothing is written back.
    pulls = len(standin.query_times())
    wait_for(lambda: len(standin.query_times()) >= pulls + 3, 20, "three more pulls")
    assert AuditEntry.objects.filter(contact=inbound).count() == 1
    assert all(inbound.salesforce_id not in call.contact_ids for call in standin.composite_calls())
    assert any(other.salesforce_id in call.contact_ids for call in standin.composite_calls())
    remote = _remote(standin, inbound)
    assert (remote["HasOptedOutOfEmail"], remote["LastModifiedById"]) == (True, INTEGRATION_USER_ID)
    assert_standin_equals_database(standin, [inbound, other])
    assert_one_task_per_change(standin, [other])  # and none for the inbound change
    client.force_login(specialist)
    page = client.get(reverse("preferences:contact", args=[inbound.pk])).content.decode()
    assert re.search(r"Opted out of <b>email</b>\s*since [^<]*\s*by Salesforce:", page)


# --- the app's own writes read back -----------------------------------------------------------


def test_the_apps_own_stale_write_read_back_does_not_undo_a_newer_consented_reenrolment(
    transactional_db: None,
    broker: RedisServer,  # apply_change's "push soon" messages go here, not to a shared Redis
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
) -> None:
    (contact,) = make_contacts(standin, 1)
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    # The opt-out is on its way to Salesforce (slowly) when the specialist re-enrols the
    # contact with consent; the opt-out lands after the re-enrolment was saved.
    standin.fail("latency", seconds=1.5, path_contains="/composite", times=1)

    def push() -> None:
        try:
            sync.push_batch()
        finally:
            connection.close()

    pushing = threading.Thread(target=push)
    pushing.start()
    wait_for(lambda: standin.received_composites() >= 1, 10, "the opt-out's push")
    apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Asked back in.",
        opt_out={"email": False},
        consent=factories.consent(),
    )
    pushing.join(timeout=15)
    assert _remote(standin, contact)["LastModifiedById"] == API_USER_ID

    inbound.pull_from_salesforce()  # before the re-enrolment is pushed

    assert current_state(contact).opted_out["email"] is False
    assert not AuditEntry.objects.filter(contact=contact, source="salesforce").exists()
