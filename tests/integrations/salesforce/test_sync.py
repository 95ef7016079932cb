"""Outbound and inbound Salesforce sync, by calling the sync functions (no worker).

Real HTTPS through the real connector to the stand-in; the end-to-end runs with a Celery
worker are in tests/reliability/.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations import core
from integrations.salesforce import inbound, sync
from preferences.models import ContactSync, SyncStatus, SyncWatermark
from preferences.services import apply_change, current_state
from tests import factories

pytestmark = pytest.mark.django_db


def _sync(contact):
    return ContactSync.objects.get(contact=contact, target="salesforce")


def test_a_change_reaches_salesforce_with_its_note_as_a_task(standin, synced_contact, specialist):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Please stop emailing.",
        opt_out={"email": True},
    )
    entry = AuditEntry.objects.get(contact=synced_contact)

    outcome = sync.push_batch()

    assert (outcome.claimed, outcome.synced) == (1, 1)
    remote = standin.contact(synced_contact.salesforce_id)
    assert remote["HasOptedOutOfEmail"] is True
    assert remote["DoNotCall"] is False
    assert remote["Newsletter__c"] is False
    task = standin.task(f"PD-{entry.pk}")
    assert task is not None
    assert "Please stop emailing." in task["Description"]
    assert task["WhoId"] == synced_contact.salesforce_id
    state = _sync(synced_contact)
    assert (state.status, state.synced_version) == (SyncStatus.SYNCED, 1)


def test_a_repeated_push_creates_no_duplicate_task(standin, synced_contact, specialist):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="No calls.",
        opt_out={"phone": True},
    )
    sync.push_batch()
    # As if the answer had been lost: the values and the note go again.
    ContactSync.objects.filter(contact=synced_contact).update(
        status="pending", synced_version=0, notes_version=0
    )
    sync.push_batch()
    assert len(standin.tasks()) == 1


def test_a_permanent_error_fails_that_contact_and_the_rest_of_the_batch_lands(
    standin, categories, specialist
):
    contacts = [
        factories.make_contact(salesforce_id=standin.add_contact(LastName=f"C{i}"))
        for i in range(3)
    ]
    standin.reject_record(
        contacts[1].salesforce_id, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Region rule"
    )
    for contact in contacts:
        apply_change(
            contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
        )

    outcome = sync.push_batch()

    assert (outcome.synced, outcome.failed) == (2, 1)
    failed = _sync(contacts[1])
    assert failed.status == SyncStatus.FAILED
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in failed.last_error
    assert "Region rule" in failed.last_error
    assert AuditEntry.objects.filter(action=AuditAction.SYNC_FAILED, contact=contacts[1]).exists()
    assert standin.contact(contacts[0].salesforce_id)["HasOptedOutOfEmail"] is True
    # No endless retry: a failed row is not claimed again until someone retries it.
    assert sync.push_batch().claimed == 0
    core.retry_failed(sync_id=failed.pk, actor=specialist)
    assert AuditEntry.objects.filter(action=AuditAction.SYNC_RETRY).count() == 1


def test_a_transient_failure_is_retried_later_with_growing_delays(
    standin, synced_contact, specialist
):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Stop.",
        opt_out={"email": True},
    )
    standin.fail("http_503", times=100)
    delays = []
    for _ in range(4):
        ContactSync.objects.filter(contact=synced_contact).update(next_attempt_at=None)
        before = timezone.now()
        outcome = sync.push_batch()
        assert outcome.retry == 1
        delays.append((_sync(synced_contact).next_attempt_at - before).total_seconds())
    assert _sync(synced_contact).attempts == 4
    # Full jitter within doubling ceilings: each ceiling is twice the last.
    assert delays[3] > delays[0]
    standin.clear_faults()
    ContactSync.objects.filter(contact=synced_contact).update(next_attempt_at=None)
    assert sync.push_batch().synced == 1
    assert _sync(synced_contact).attempts == 0


def test_a_row_not_yet_due_is_not_claimed(standin, synced_contact, specialist):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Stop.",
        opt_out={"email": True},
    )
    ContactSync.objects.filter(contact=synced_contact).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    assert sync.push_batch().claimed == 0


def test_an_inbound_unsubscribe_is_applied_with_source_salesforce_and_not_pushed_back(
    standin, synced_contact
):
    SyncWatermark.objects.create(
        name=inbound.WATERMARK, value=timezone.now() - timedelta(minutes=1)
    )
    standin.external_update(synced_contact.salesforce_id, HasOptedOutOfEmail=True)
    calls_before = standin.api_calls

    inbound.pull_from_salesforce()

    assert current_state(synced_contact).opted_out["email"] is True
    entry = AuditEntry.objects.get(contact=synced_contact)
    assert (entry.source, entry.actor_label, entry.action) == (
        "salesforce",
        "Salesforce",
        "opt_out",
    )
    assert _sync(synced_contact).status == SyncStatus.SYNCED
    assert sync.push_batch().claimed == 0
    assert standin.api_calls == calls_before + 2  # the queries only: Contact, Lead
    # Reading again sees our own state: nothing new.
    inbound.pull_from_salesforce()
    assert AuditEntry.objects.filter(contact=synced_contact).count() == 1


def test_an_opt_in_made_in_salesforce_is_not_applied_and_is_pushed_back(
    standin, synced_contact, specialist
):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Stop.",
        opt_out={"email": True},
    )
    sync.push_batch()
    SyncWatermark.objects.create(
        name=inbound.WATERMARK, value=timezone.now() - timedelta(minutes=1)
    )
    standin.external_update(synced_contact.salesforce_id, HasOptedOutOfEmail=False)

    inbound.pull_from_salesforce()
    assert current_state(synced_contact).opted_out["email"] is True
    sync.push_batch()
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is True


def test_a_newer_consented_reenrolment_wins_over_an_older_opt_out_in_salesforce(
    standin, synced_contact, specialist
):
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Stop.",
        opt_out={"email": True},
    )
    sync.push_batch()
    SyncWatermark.objects.create(
        name=inbound.WATERMARK, value=timezone.now() - timedelta(minutes=1)
    )
    # Salesforce still says opted out (an older write); locally the contact re-enrolled since.
    standin.external_update(synced_contact.salesforce_id, HasOptedOutOfEmail=True, DoNotCall=False)
    apply_change(
        contact=synced_contact,
        actor=specialist,
        source="staff",
        note="Asked back in.",
        opt_out={"email": False},
        consent=factories.consent(),
    )

    inbound.pull_from_salesforce()

    assert current_state(synced_contact).opted_out["email"] is False
    sync.push_batch()
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is False
