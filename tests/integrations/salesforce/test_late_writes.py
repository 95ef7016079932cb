"""Sent is not held (docs/design.md): a push whose answer never came may land late, after a
newer one. The version field and the org's ordering rule refuse it; a read-back of
uncertain pushes corrects it where the rule is missing. By calling the sync functions; the
end-to-end run with a worker is tests/reliability/test_late_writes.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.salesforce import sync
from integrations.salesforce.client import SUPERSEDED_MARKER
from preferences.models import Contact, ContactSync, SyncStatus
from preferences.services import apply_change

pytestmark = pytest.mark.django_db

VERSION = "Preference_Version__c"


def _sync(contact: Contact) -> ContactSync:
    return ContactSync.objects.get(contact=contact, target=sync.TARGET)


def _change(contact: Contact, actor: Any, **opt_out: bool) -> None:
    apply_change(contact=contact, actor=actor, source="staff", note="Asked.", opt_out=opt_out)


def test_every_push_writes_the_contacts_version(standin, synced_contact, specialist):
    _change(synced_contact, specialist, email=True)
    _change(synced_contact, specialist, phone=True)

    sync.push_batch()

    held = standin.contact(synced_contact.salesforce_id)
    synced_contact.refresh_from_db()
    assert held[VERSION] == synced_contact.version == 2


def test_a_write_the_ordering_rule_refuses_is_superseded_not_failed(
    standin, synced_contact, specialist
):
    # Salesforce holds a newer version than this push carries (a later push of ours landed).
    standin.external_update(synced_contact.salesforce_id, **{VERSION: 7})
    _change(synced_contact, specialist, email=True)

    outcome = sync.push_batch()

    assert (outcome.synced, outcome.failed, outcome.retry) == (1, 0, 0)
    row = _sync(synced_contact)
    assert row.status == SyncStatus.SYNCED and row.synced_version == 1
    assert not AuditEntry.objects.filter(action=AuditAction.SYNC_FAILED).exists()
    assert standin.contact(synced_contact.salesforce_id)[VERSION] == 7  # refused, as it should


def test_another_validation_rule_on_the_contact_is_still_a_failure(
    standin, synced_contact, specialist
):
    standin.reject_record(
        synced_contact.salesforce_id, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Region rule"
    )
    _change(synced_contact, specialist, email=True)

    assert sync.push_batch().failed == 1
    assert _sync(synced_contact).status == SyncStatus.FAILED


def test_a_refusal_naming_the_marker_is_superseded_whatever_field_it_names(
    standin, synced_contact, specialist
):
    standin.reject_record(
        synced_contact.salesforce_id,
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        f"{SUPERSEDED_MARKER}: a newer Preference Desk change is already stored.",
    )
    _change(synced_contact, specialist, email=True)

    assert sync.push_batch().synced == 1
    assert _sync(synced_contact).status == SyncStatus.SYNCED


def test_a_push_without_an_answer_marks_its_contacts_uncertain(
    standin, synced_contact, specialist, settings
):
    settings.SALESFORCE_TIMEOUT = 1
    standin.fail("timeout", times=1, seconds=3, path_contains="/composite")
    _change(synced_contact, specialist, email=True)
    before = timezone.now()

    outcome = sync.push_batch()

    assert outcome.retry == 1
    row = _sync(synced_contact)
    assert row.status == SyncStatus.PENDING and row.last_error.startswith("TIMEOUT")
    assert row.uncertain_since is not None and row.uncertain_since >= before


def test_a_push_that_never_left_is_not_uncertain(standin, synced_contact, specialist, settings):
    settings.SALESFORCE_TIMEOUT = 1
    standin.fail("http_503", times=1)
    _change(synced_contact, specialist, email=True)

    assert sync.push_batch().retry == 1
    assert _sync(synced_contact).uncertain_since is None


def _uncertain(contact: Contact, *, minutes_ago: float) -> None:
    ContactSync.objects.filter(contact=contact, target=sync.TARGET).update(
        uncertain_since=timezone.now() - timedelta(minutes=minutes_ago)
    )


def test_uncertain_contacts_are_not_read_back_while_the_push_may_still_run(
    standin, synced_contact, specialist, settings
):
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    _change(synced_contact, specialist, email=True)
    sync.push_batch()
    _uncertain(synced_contact, minutes_ago=5)
    calls = standin.api_calls

    assert sync.verify_uncertain().read == 0
    assert standin.api_calls == calls
    assert _sync(synced_contact).uncertain_since is not None


def test_a_late_older_write_found_by_the_read_back_is_pushed_over(
    standin, synced_contact, specialist, settings, django_capture_on_commit_callbacks
):
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    _change(synced_contact, specialist, email=True)
    sync.push_batch()
    # The late, older request lands after the newer push (as in an org without the rule).
    standin.external_update(synced_contact.salesforce_id, HasOptedOutOfEmail=False)
    _uncertain(synced_contact, minutes_ago=12)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = sync.verify_uncertain()

    assert (outcome.read, outcome.held, outcome.pushed_again) == (1, 0, 1)
    row = _sync(synced_contact)
    assert row.status == SyncStatus.PENDING and row.uncertain_since is None
    sync.push_batch()
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is True


def test_a_read_back_that_finds_the_apps_values_settles_the_contact(
    standin, synced_contact, specialist, settings
):
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    _change(synced_contact, specialist, email=True)
    sync.push_batch()
    _uncertain(synced_contact, minutes_ago=12)

    outcome = sync.verify_uncertain()

    assert (outcome.read, outcome.held, outcome.pushed_again) == (1, 1, 0)
    row = _sync(synced_contact)
    assert row.status == SyncStatus.SYNCED and row.uncertain_since is None


def test_a_newer_unanswered_push_keeps_the_contact_uncertain(
    standin, synced_contact, specialist, settings, monkeypatch
):
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    _change(synced_contact, specialist, email=True)
    sync.push_batch()
    _uncertain(synced_contact, minutes_ago=12)
    newer = timezone.now()
    real_get = sync.SalesforceClient.get_contacts

    def get_contacts(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Another push got no answer while this read-back was reading Salesforce.
        ContactSync.objects.filter(contact=synced_contact).update(uncertain_since=newer)
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(sync.SalesforceClient, "get_contacts", get_contacts)

    sync.verify_uncertain()

    assert _sync(synced_contact).uncertain_since == newer
