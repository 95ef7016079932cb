"""The re-subscribe request queue's domain and task, by calling the functions (no worker).

Real HTTPS through the real Marketing Cloud connector to the stand-in; the end-to-end run
with a Celery worker is in tests/reliability/test_resubscribe_lookup.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEntry, PendingReview
from integrations import core, tasks
from integrations.marketing_cloud import sync as lookup
from preferences.models import (
    ContactSync,
    ResubscribeRequest,
    ResubscribeState,
    SubscriberStatus,
    SyncStatus,
)
from preferences.resubscribe import requests as resubscribe
from preferences.resubscribe import subscribers
from preferences.resubscribe.views import _queue_rows
from preferences.services import ChangeRefused, apply_change
from tests import factories

pytestmark = pytest.mark.django_db

PARENT, ALUMNI, ATHLETICS = "510000001", "510000002", "510000003"
MC = "marketing_cloud"


@pytest.fixture
def units(db):
    return factories.make_business_units()


def _opt_out(contact, actor, note="Asked to stop email."):
    return apply_change(
        contact=contact, actor=actor, source="staff", note=note, opt_out={"email": True}
    )


def _re_enrol(contact, actor, note="Called: wants email again."):
    _opt_out(contact, actor)
    return apply_change(
        contact=contact,
        actor=actor,
        source="staff",
        note=note,
        opt_out={"email": False},
        consent=factories.consent(),
    )


def _sync(contact):
    return ContactSync.objects.get(contact=contact, target=MC)


def _statuses(contact):
    return dict(
        SubscriberStatus.objects.filter(contact=contact).values_list("business_unit__mid", "status")
    )


def _requests(contact, **filters):
    return list(ResubscribeRequest.objects.filter(contact=contact, **filters))


def _make_due(contact):
    ContactSync.objects.filter(contact=contact, target=MC).update(next_attempt_at=None)


# --- the lookup after a re-enrolment -------------------------------------------------------


@pytest.mark.parametrize("mid", [PARENT, ALUMNI], ids=["parent", "child"])
@pytest.mark.parametrize(
    ("status", "seen", "opens"),
    [
        ("Active", "active", False),
        (None, "not_found", False),
        ("Bounced", "bounced", True),
        ("Held", "held", True),
        ("Unsubscribed", "unsubscribed", True),
    ],
    ids=["active", "not-found", "bounced", "held", "unsubscribed"],
)
def test_each_status_in_parent_and_child_units_opens_a_request_only_when_needed(
    marketing_cloud, units, contact, specialist, mid, status, seen, opens
):
    if status is not None:
        marketing_cloud.set_subscriber(contact.salesforce_id, status, mid=mid)
    _re_enrol(contact, specialist)

    outcome = lookup.check_batch()

    assert (outcome.claimed, outcome.looked_up, outcome.synced) == (1, 1, 1)
    # Every active business unit is looked up and recorded, with when it was read.
    assert _statuses(contact) == {
        PARENT: "not_found",
        ALUMNI: "not_found",
        ATHLETICS: "not_found",
        mid: seen,
    }
    assert all(s.read_at is not None for s in SubscriberStatus.objects.filter(contact=contact))
    opened = _requests(contact)
    if opens:
        assert [(r.business_unit.mid, r.status_seen, r.state) for r in opened] == [
            (mid, seen, ResubscribeState.OPEN)
        ]
        entry = AuditEntry.objects.get(action=AuditAction.RESUBSCRIBE_REQUEST)
        assert (entry.contact, entry.resubscribe_request) == (contact, opened[0])
        assert "opened" in entry.note and seen.replace("_", " ") in entry.note.lower()
        assert entry.contact_version is None  # not a preference change: no Task, no file row
    else:
        assert opened == []
        assert not AuditEntry.objects.filter(action=AuditAction.RESUBSCRIBE_REQUEST).exists()
    contact.refresh_from_db()
    row = _sync(contact)
    assert (row.status, row.synced_version) == (SyncStatus.SYNCED, contact.version)


def test_active_in_the_parent_but_held_in_a_child_opens_a_request_for_the_child_only(
    marketing_cloud, units, contact, specialist
):
    key = contact.salesforce_id
    marketing_cloud.set_subscriber(key, "Active", mid=PARENT)
    marketing_cloud.set_subscriber(key, "Held", mid=ALUMNI)
    marketing_cloud.set_subscriber(key, "Active", mid=ATHLETICS)
    _re_enrol(contact, specialist)

    assert lookup.check_batch().opened == 1

    assert _statuses(contact) == {PARENT: "active", ALUMNI: "held", ATHLETICS: "active"}
    [request] = _requests(contact)
    assert (request.business_unit.mid, request.status_seen) == (ALUMNI, "held")


def test_a_request_names_who_re_enrolled_the_contact_and_the_consent(
    marketing_cloud, units, contact, specialist
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Bounced", mid=ATHLETICS)
    entry = _re_enrol(contact, specialist)

    lookup.check_batch()

    [request] = _requests(contact)
    assert request.requested_by == specialist
    assert request.requested_at == entry.created_at
    assert request.re_enrolment == entry
    assert request.consent is not None and request.consent == entry.consent
    assert request.consent.attested


def test_changes_that_are_not_an_email_re_enrolment_are_checked_without_a_call(
    marketing_cloud, units, contact, specialist
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _opt_out(contact, specialist)
    apply_change(
        contact=contact, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )
    apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Phone again.",
        opt_out={"phone": False},
        consent=factories.consent(),
    )

    assert lookup.check_batch().looked_up == 0

    assert (marketing_cloud.token_calls, marketing_cloud.api_calls) == (0, 0)
    contact.refresh_from_db()
    assert (_sync(contact).status, _sync(contact).synced_version) == ("synced", contact.version)
    assert _requests(contact) == []


def test_a_phone_re_enrolment_that_ticks_categories_is_not_an_email_re_enrolment(
    marketing_cloud, units, contact, specialist
):
    apply_change(
        contact=contact, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )
    entry = apply_change(
        contact=contact,
        actor=specialist,
        source="staff",
        note="Phone again, and the newsletter.",
        opt_out={"phone": False},
        categories=["newsletter"],
        consent=factories.consent(),
    )
    assert "email" in entry.channels  # categories are email: why the snapshots are read

    assert lookup.check_batch().looked_up == 0
    assert marketing_cloud.api_calls == 0


def test_a_contact_opted_out_again_before_the_lookup_gets_no_request(
    marketing_cloud, units, contact, specialist
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)
    _opt_out(contact, specialist, "Changed her mind.")

    assert lookup.check_batch().looked_up == 0

    assert _requests(contact) == []
    assert marketing_cloud.api_calls == 0
    assert _sync(contact).status == SyncStatus.SYNCED


def test_a_repeated_lookup_opens_no_second_request(marketing_cloud, units, contact, specialist):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Unsubscribed", mid=PARENT)
    _re_enrol(contact, specialist)
    lookup.check_batch()
    # As after a lost acknowledgement: the same re-enrolment is looked up again.
    ContactSync.objects.filter(contact=contact, target=MC).update(
        status=SyncStatus.PENDING, synced_version=0
    )

    outcome = lookup.check_batch()

    assert (outcome.looked_up, outcome.opened) == (1, 0)
    assert len(_requests(contact)) == 1
    assert AuditEntry.objects.filter(action=AuditAction.RESUBSCRIBE_REQUEST).count() == 1
    assert marketing_cloud.api_calls == 6  # two lookups, three business units each


def test_a_new_re_enrolment_after_the_request_was_closed_opens_a_new_one(
    marketing_cloud, units, contact, specialist
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)
    lookup.check_batch()
    _re_enrol(contact, specialist, "Called again.")  # the opt-out closes the first request

    lookup.check_batch()

    states = sorted(r.state for r in _requests(contact))
    assert states == [ResubscribeState.CLOSED, ResubscribeState.OPEN]


def test_inactive_business_units_are_not_looked_up(marketing_cloud, units, contact, specialist):
    units[2].is_active = False
    units[2].save()
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ATHLETICS)
    _re_enrol(contact, specialist)

    lookup.check_batch()

    assert set(_statuses(contact)) == {PARENT, ALUMNI}
    assert _requests(contact) == []
    assert {mid for op, mid in marketing_cloud.call_log if op != "token"} == {PARENT, ALUMNI}


@pytest.mark.parametrize("fault", ["http_503", "http_500", "server_fault", "timeout"])
def test_a_passing_failure_delays_the_lookup_and_retries_it_with_backoff(
    marketing_cloud, units, contact, specialist, settings, fault
):
    settings.MARKETING_CLOUD_TIMEOUT = 1
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)
    marketing_cloud.fail(fault, seconds=3 if fault == "timeout" else None)
    delays = []
    for attempt in (1, 2, 3):
        before = timezone.now()
        outcome = lookup.check_batch()
        assert (outcome.retry, outcome.failed, outcome.opened) == (1, 0, 0)
        row = _sync(contact)
        assert row.status == SyncStatus.PENDING  # the re-enrolment is not lost ...
        assert row.attempts == attempt
        assert row.last_error
        assert outcome.next_attempt_at == row.next_attempt_at
        delays.append((row.next_attempt_at - before).total_seconds())
        # ... and not taken again before its time.
        assert lookup.check_batch().claimed == 0
        _make_due(contact)
    assert delays[2] > delays[0]  # jitter under doubling ceilings: 0.5-1 s, then 2-4 s
    assert _requests(contact) == []

    marketing_cloud.clear_faults()
    assert lookup.check_batch().opened == 1
    row = _sync(contact)
    assert (row.status, row.attempts, row.last_error) == (SyncStatus.SYNCED, 0, "")


def test_a_token_that_expired_is_renewed_once_and_the_lookup_goes_through(
    marketing_cloud, units, contact, specialist
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Bounced", mid=PARENT)
    other = factories.make_contact()
    _re_enrol(other, specialist)
    lookup.check_batch()  # a token is cached now
    _re_enrol(contact, specialist)
    marketing_cloud.expire_tokens()

    assert lookup.check_batch().opened == 1
    assert marketing_cloud.token_calls == 2


def test_a_token_that_keeps_failing_is_a_passing_failure(
    marketing_cloud, units, contact, specialist
):
    _re_enrol(contact, specialist)
    marketing_cloud.fail("expire_tokens")

    outcome = lookup.check_batch()

    assert (outcome.retry, outcome.failed) == (1, 0)
    assert "LOGIN_FAILED" in _sync(contact).last_error


def test_after_a_passing_failure_the_rest_of_the_batch_waits_too(
    marketing_cloud, units, specialist, categories
):
    contacts = [factories.make_contact() for _ in range(3)]
    for contact in contacts:
        _re_enrol(contact, specialist)
    marketing_cloud.fail("http_503", times=1)

    outcome = lookup.check_batch()

    assert (outcome.claimed, outcome.retry, outcome.looked_up) == (3, 3, 0)
    assert marketing_cloud.api_calls == 0  # one failed call, then no more hammering
    for contact in contacts:
        assert _sync(contact).status == SyncStatus.PENDING


def test_a_permanent_failure_stops_and_shows_on_the_sync_problems_page(
    marketing_cloud, units, contact, specialist, system_client
):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)
    marketing_cloud.fail("client_fault", times=1)

    outcome = lookup.check_batch()

    assert (outcome.failed, outcome.retry) == (1, 0)
    row = _sync(contact)
    assert row.status == SyncStatus.FAILED
    assert "User Not Authorized" in row.last_error
    failure = AuditEntry.objects.get(action=AuditAction.SYNC_FAILED, contact=contact)
    assert failure.actor_label == resubscribe.LOOKUP_ACTOR
    assert "Marketing Cloud refused" in failure.note
    assert lookup.check_batch().claimed == 0  # no endless retry
    page = system_client.get("/sync/problems/").content.decode()
    assert "Marketing Cloud" in page and "User Not Authorized" in page

    # The system team fixed the cause: retrying looks the contact up again.
    core.retry_failed(sync_id=row.pk, actor=specialist)
    assert lookup.check_batch().opened == 1


def test_nothing_is_sent_while_marketing_cloud_is_disabled(
    marketing_cloud, units, contact, specialist, settings
):
    settings.MARKETING_CLOUD_ENABLED = False
    settings.SALESFORCE_ENABLED = False
    _re_enrol(contact, specialist)

    assert tasks.push("marketing_cloud") == {}
    assert tasks.sweep() == 0

    assert marketing_cloud.token_calls == 0
    assert _sync(contact).status == SyncStatus.PENDING  # looked up once it is configured
    settings.MARKETING_CLOUD_ENABLED = True
    assert tasks.sweep() == 1
    assert tasks.push("marketing_cloud")["looked_up"] == 1


def test_the_task_reports_what_it_did(marketing_cloud, units, contact, specialist):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)

    result = tasks.push("marketing_cloud")

    assert result == {"claimed": 1, "looked_up": 1, "opened": 1, "retry": 0, "failed": 0}


# --- auto-close ----------------------------------------------------------------------------


def test_opting_out_again_closes_open_requests_with_an_audit_entry(
    units, contact, specialist, system_user
):
    first = factories.make_resubscribe_request(contact, actor=specialist, business_unit=units[1])
    with transaction.atomic():
        second = resubscribe.open_request(
            contact=contact,
            business_unit=units[2],
            status_seen="bounced",
            re_enrolment=first.re_enrolment,
        )
    resubscribe.start(request_id=first.pk, actor=system_user, note="Looking at it.")

    change = _opt_out(contact, specialist, "Please stop after all.")

    for request in (first, second):  # in progress or still open: neither is worked now
        request.refresh_from_db()
        assert request.state == ResubscribeState.CLOSED
        assert request.closed_at == change.created_at
        assert f"PD-{change.pk}" in request.outcome
        closing = request.audit_entries.order_by("-id").first()
        assert closing.action == AuditAction.RESUBSCRIBE_REQUEST
        assert closing.contact == contact
        assert "closed automatically" in closing.note
        assert change.id < closing.id  # in the opt-out's own transaction


def test_a_phone_opt_out_leaves_requests_open(units, contact, specialist):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    apply_change(
        contact=contact, actor=specialist, source="staff", note="No calls.", opt_out={"phone": True}
    )
    request.refresh_from_db()
    assert request.state == ResubscribeState.OPEN


# --- working a request ----------------------------------------------------------------------


def _trail(request):
    return list(request.audit_entries.order_by("id").values_list("action", "actor_label"))


def test_a_request_moves_open_in_progress_done_each_step_with_a_note_and_an_entry(
    units, contact, specialist, system_user
):
    request = factories.make_resubscribe_request(contact, actor=specialist)

    resubscribe.start(request_id=request.pk, actor=system_user, note="On it.")
    request.refresh_from_db()
    assert (request.state, request.worked_by) == (ResubscribeState.IN_PROGRESS, system_user)

    resubscribe.complete(request_id=request.pk, actor=system_user, note="Set Active in MC.")
    request.refresh_from_db()
    assert request.state == ResubscribeState.DONE
    assert request.closed_at is not None
    assert "Set Active in MC." in request.outcome
    who = system_user.get_username()
    assert _trail(request) == [
        (AuditAction.RESUBSCRIBE_REQUEST, resubscribe.LOOKUP_ACTOR),
        (AuditAction.RESUBSCRIBE_REQUEST, who),
        (AuditAction.RESUBSCRIBE_REQUEST, who),
    ]
    notes = list(request.audit_entries.order_by("id").values_list("note", flat=True))
    assert "in progress: On it." in notes[1]
    assert "done by hand: Set Active in MC." in notes[2]


def test_a_request_can_be_rejected_with_a_reason(units, contact, specialist, system_user):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    resubscribe.reject(request_id=request.pk, actor=system_user, note="Duplicate contact.")
    request.refresh_from_db()
    assert request.state == ResubscribeState.REJECTED
    assert "Duplicate contact." in request.outcome


@pytest.mark.parametrize("step", ["start", "complete", "reject"])
def test_a_step_without_a_note_is_refused_and_changes_nothing(
    units, contact, specialist, system_user, step
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    entries = AuditEntry.objects.count()
    with pytest.raises(ChangeRefused, match="note"):
        getattr(resubscribe, step)(request_id=request.pk, actor=system_user, note="  ")
    request.refresh_from_db()
    assert request.state == ResubscribeState.OPEN
    assert AuditEntry.objects.count() == entries


@pytest.mark.parametrize("step", ["start", "complete", "reject"])
def test_a_closed_request_cannot_be_worked_again(units, contact, specialist, system_user, step):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    resubscribe.complete(request_id=request.pk, actor=system_user, note="Done.")
    with pytest.raises(ChangeRefused, match="done already"):
        getattr(resubscribe, step)(request_id=request.pk, actor=system_user, note="Again.")


# --- urgent --------------------------------------------------------------------------------


def test_marking_urgent_emails_the_system_team_once_committed(
    units, contact, specialist, settings, django_capture_on_commit_callbacks
):
    settings.RESUBSCRIBE_NOTIFY_EMAIL = "ecomm-system@university.example"
    request = factories.make_resubscribe_request(contact, actor=specialist)
    with django_capture_on_commit_callbacks(execute=True):
        resubscribe.mark_urgent(
            request_id=request.pk,
            actor=specialist,
            reason="Reunion invitation goes out Friday.",
            link="https://desk.example/resubscribe/1/",
        )
        assert mail.outbox == []  # not before the flag is committed

    request.refresh_from_db()
    assert (request.urgent, request.urgent_reason) == (True, "Reunion invitation goes out Friday.")
    [message] = mail.outbox
    assert message.to == ["ecomm-system@university.example"]
    assert str(contact) in message.subject
    assert "Alumni Association" in message.subject
    assert "Reunion invitation goes out Friday." in message.body
    assert contact.salesforce_id in message.body
    assert "https://desk.example/resubscribe/1/" in message.body
    entry = request.audit_entries.order_by("-id").first()
    assert "marked urgent: Reunion invitation goes out Friday." in entry.note
    assert entry.actor == specialist


def test_urgent_needs_a_reason_and_happens_once(
    units, contact, specialist, django_capture_on_commit_callbacks
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(ChangeRefused, match="urgent"):
            resubscribe.mark_urgent(request_id=request.pk, actor=specialist, reason=" ")
        resubscribe.mark_urgent(request_id=request.pk, actor=specialist, reason="Soon.")
        with pytest.raises(ChangeRefused, match="already"):
            resubscribe.mark_urgent(request_id=request.pk, actor=specialist, reason="Sooner.")
    assert len(mail.outbox) == 1


def test_urgent_requests_come_first_in_the_queue_then_the_oldest(units, specialist, categories):
    older, newer, flagged = (
        factories.make_resubscribe_request(factories.make_contact(), actor=specialist)
        for _ in range(3)
    )
    resubscribe.mark_urgent(request_id=flagged.pk, actor=specialist, reason="Soon.")
    assert [r.pk for r in _queue_rows()] == [flagged.pk, older.pk, newer.pk]


# --- resubscribing through the connector ---------------------------------------------------


def test_resubscribing_sets_active_in_that_unit_reads_it_back_and_closes_the_request(
    marketing_cloud, units, contact, specialist, system_user
):
    key = contact.salesforce_id
    marketing_cloud.set_subscriber(key, "Active", mid=PARENT)
    marketing_cloud.set_subscriber(key, "Held", mid=ALUMNI)
    _re_enrol(contact, specialist)
    lookup.check_batch()
    [request] = _requests(contact)

    result = subscribers.resubscribe_in_marketing_cloud(
        request_id=request.pk, actor=system_user, note="Weekly batch.", confirmed=True
    )

    assert (result.status, result.problem) == ("active", "")
    assert marketing_cloud.status(key, ALUMNI) == "Active"
    assert ("Update", ALUMNI) in marketing_cloud.call_log
    assert marketing_cloud.call_log[-1] == ("Retrieve", ALUMNI)  # read back after the change
    request.refresh_from_db()
    assert (request.state, request.worked_by) == (ResubscribeState.DONE, system_user)
    assert "read back Active" in request.outcome
    assert _statuses(contact)[ALUMNI] == "active"
    change = request.audit_entries.get(action=AuditAction.RESUBSCRIBE)
    assert change.risky  # a manager reviews it
    assert PendingReview.objects.filter(entry=change).exists()
    assert "status read back: Active" in change.note and "Weekly batch." in change.note


def test_resubscribing_needs_a_confirmation_and_a_note_before_anything_is_sent(
    marketing_cloud, units, contact, specialist, system_user
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    with pytest.raises(ChangeRefused, match="Confirm"):
        subscribers.resubscribe_in_marketing_cloud(
            request_id=request.pk, actor=system_user, note="Batch.", confirmed=False
        )
    with pytest.raises(ChangeRefused, match="note"):
        subscribers.resubscribe_in_marketing_cloud(
            request_id=request.pk, actor=system_user, note="", confirmed=True
        )
    assert marketing_cloud.call_log == []
    request.refresh_from_db()
    assert request.state == ResubscribeState.OPEN


def test_a_contact_opted_out_again_is_not_resubscribed(
    marketing_cloud, units, contact, specialist, system_user
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    _opt_out(contact, specialist)
    with pytest.raises(ChangeRefused, match="closed"):
        subscribers.resubscribe_in_marketing_cloud(
            request_id=request.pk, actor=system_user, note="Batch.", confirmed=True
        )
    assert marketing_cloud.call_log == []


def test_when_marketing_cloud_fails_nothing_changes_and_staff_are_told(
    marketing_cloud, units, contact, specialist, system_user
):
    request = factories.make_resubscribe_request(contact, actor=specialist)
    marketing_cloud.fail("http_503")
    with pytest.raises(ChangeRefused, match="Nothing was changed"):
        subscribers.resubscribe_in_marketing_cloud(
            request_id=request.pk, actor=system_user, note="Batch.", confirmed=True
        )
    request.refresh_from_db()
    assert request.state == ResubscribeState.OPEN
    assert not request.audit_entries.filter(action=AuditAction.RESUBSCRIBE).exists()


def test_when_the_status_does_not_read_active_the_request_stays_in_progress(
    marketing_cloud, units, contact, specialist, system_user
):
    request = factories.make_resubscribe_request(contact, actor=specialist, business_unit=units[0])
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=PARENT)
    # The read-back fails: the change went out but is not proven.
    marketing_cloud.fail("http_503", action="Retrieve")

    result = subscribers.resubscribe_in_marketing_cloud(
        request_id=request.pk, actor=system_user, note="Batch.", confirmed=True
    )

    assert result.status is None and "could not be read back" in result.problem
    request.refresh_from_db()
    assert request.state == ResubscribeState.IN_PROGRESS
    assert request.audit_entries.filter(action=AuditAction.RESUBSCRIBE).count() == 1


# --- refresh -------------------------------------------------------------------------------


def test_refresh_reads_every_business_unit_now(marketing_cloud, units, contact):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Bounced", mid=ATHLETICS)
    subscribers.refresh_statuses(contact=contact)
    assert _statuses(contact) == {PARENT: "not_found", ALUMNI: "not_found", ATHLETICS: "bounced"}
    assert _requests(contact) == []  # a read opens nothing: requests follow re-enrolments


def test_a_failed_refresh_keeps_the_statuses_read_before(marketing_cloud, units, contact, settings):
    marketing_cloud.set_subscriber(contact.salesforce_id, "Held", mid=PARENT)
    subscribers.refresh_statuses(contact=contact)
    read_at = SubscriberStatus.objects.get(contact=contact, business_unit=units[0]).read_at
    settings.MARKETING_CLOUD_REFRESH_TIMEOUT = 1
    marketing_cloud.fail("timeout", seconds=3)

    with pytest.raises(ChangeRefused, match="last ones read"):
        subscribers.refresh_statuses(contact=contact)

    kept = SubscriberStatus.objects.get(contact=contact, business_unit=units[0])
    assert (kept.status, kept.read_at) == ("held", read_at)
    assert timezone.now() - read_at < timedelta(minutes=1)


# --- the nightly refresh of old requests ------------------------------------------------------


def test_the_nightly_refresh_reads_week_old_requests_again_and_closes_those_now_active(
    marketing_cloud, units, contact, specialist, categories
):
    from datetime import timedelta

    from django.utils import timezone

    from integrations import reconcile

    old = factories.make_resubscribe_request(contact, actor=specialist, business_unit=units[1])
    still_held = factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[2]
    )
    fresh = factories.make_resubscribe_request(
        factories.make_contact(), actor=specialist, business_unit=units[1]
    )
    week_ago = timezone.now() - timedelta(days=8)
    ResubscribeRequest.objects.filter(pk__in=[old.pk, still_held.pk]).update(requested_at=week_ago)
    marketing_cloud.set_subscriber(contact.salesforce_id, "Active", mid=ALUMNI)
    marketing_cloud.set_subscriber(still_held.contact.salesforce_id, "Held", mid=ATHLETICS)
    calls = marketing_cloud.api_calls

    (run,) = reconcile.run([MC])

    assert not run.failed and run.detail.startswith("2 open requests older than a week")
    assert marketing_cloud.api_calls - calls == 2  # the fresh request is not read
    old.refresh_from_db()
    assert old.state == ResubscribeState.DONE and "reads the subscriber Active" in old.outcome
    closing = AuditEntry.objects.filter(resubscribe_request=old).latest("id")
    assert closing.actor_label == resubscribe.QUEUE_ACTOR
    assert ResubscribeRequest.objects.get(pk=still_held.pk).state == ResubscribeState.OPEN
    assert ResubscribeRequest.objects.get(pk=fresh.pk).state == ResubscribeState.OPEN
    held = SubscriberStatus.objects.get(contact=still_held.contact, business_unit=units[2])
    assert held.status == "held" and held.read_at > week_ago
