"""A push that Salesforce applies after the client gave up, after the retry landed, must not
leave Salesforce behind the app (docs/design.md, "Sent is not held").

The stand-in holds the first composite call longer than the client waits, then applies it:
the worker sees a timeout, marks its 20 contacts uncertain and retries with the newer
values (each contact opted out meanwhile), which land first; then the held request, with
the older values (subscribed, not opted out), is applied. With the org's ordering rule
Salesforce refuses that older write; without it, the read-back of uncertain contacts finds
the older values once such a request can no longer run, and pushes the app's again. Either
way the test ends with Salesforce equal to the app for every contact.
"""

from __future__ import annotations

from typing import Any

import pytest

from preferences.models import Contact, ContactSync, SyncStatus
from preferences.services import apply_change
from tests.reliability.conftest import (
    CeleryProcesses,
    CompositeCall,
    RecordingStandIn,
    make_contacts,
    standin_mismatches,
    wait_for,
)

CONTACTS = 20
HOLD_SECONDS = 6  # the stand-in holds the first push this long, then applies it
LATE_ENV = {
    "SALESFORCE_TIMEOUT": "2",  # the worker gives up after 2 s: before the held push is applied
    "SALESFORCE_MAX_REQUEST_SECONDS": "10",  # a held push may still land within 10 s
    "SYNC_VERIFY_SECONDS": "1",
}


def _unsettled(standin: RecordingStandIn, contacts: list[Contact]) -> list[str]:
    """What still stands between the app and 'Salesforce holds every contact, certainly'."""
    rows = ContactSync.objects.filter(target="salesforce", contact__in=contacts)
    unsettled = [
        f"{row.contact_id}: {row.status} v{row.synced_version}"
        + (" uncertain" if row.uncertain_since else "")
        for row in rows
        if row.status != SyncStatus.SYNCED or row.uncertain_since is not None
    ]
    return unsettled + standin_mismatches(standin, contacts)


def _refusals(call: CompositeCall) -> list[str]:
    """The per-contact status codes of a composite call's contacts subrequest."""
    entries = (call.answer or {}).get("compositeResponse", [])
    contacts: dict[str, Any] = next((e for e in entries if e.get("referenceId") == "contacts"), {})
    return [
        (result.get("errors") or [{}])[0].get("statusCode", "")
        for result in contacts.get("body") or []
        if not result.get("success")
    ]


@pytest.mark.parametrize("rule", [True, False], ids=["with the ordering rule", "without it"])
def test_a_push_that_lands_after_a_newer_one_never_leaves_salesforce_behind(
    celery: CeleryProcesses,
    standin: RecordingStandIn,
    category_fields: dict[str, str],
    specialist: Any,
    rule: bool,
) -> None:
    standin.set_version_rule(rule)
    contacts = make_contacts(standin, CONTACTS)
    for contact in contacts:  # version 1: subscribed to the newsletter
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Asked for the newsletter at the reunion.",
            categories=["newsletter"],
        )
    standin.fail("timeout", times=1, seconds=HOLD_SECONDS, path_contains="/composite")
    celery.worker(concurrency=2, wait=False, **LATE_ENV)
    celery.beat(wait=False, **LATE_ENV)
    celery.wait_ready()
    wait_for(lambda: standin.received_composites() >= 1, 30, "the first push to arrive")

    for contact in contacts:  # version 2, while version 1 hangs: opted out of all email
        apply_change(
            contact=contact,
            actor=specialist,
            source="staff",
            note="Called back: stop all email.",
            opt_out={"email": True},
        )

    wait_for(
        lambda: len([c for c in standin.composite_calls() if len(c.contact_ids) > 0]) >= 2,
        30,
        "the retry to land and the held push to be applied",
    )
    wait_for(
        lambda: not _unsettled(standin, contacts),
        90,
        lambda: f"every contact settled: {_unsettled(standin, contacts)[:5]}",
    )

    calls = standin.composite_calls()
    held, *later = calls
    newer = [call for call in later if set(call.contact_ids) == set(held.contact_ids)]
    assert len(held.contact_ids) == CONTACTS and set(held.versions) == {1}
    assert newer and newer[0].done < held.done, "the older push was not applied last"
    assert set(newer[0].versions) == {2}
    if rule:
        # Salesforce refused the late, older write for every contact.
        assert _refusals(held) == ["FIELD_CUSTOM_VALIDATION_EXCEPTION"] * CONTACTS
    else:
        # It was applied; the read-back found it and the app's values went again.
        assert _refusals(held) == []
        assert any(call.at > held.done and set(call.versions) == {2} for call in calls)
    for contact in contacts:
        record = standin.contact(contact.salesforce_id)
        assert record is not None
        assert record["HasOptedOutOfEmail"] is True
        assert record["Preference_Version__c"] == 2
    assert not standin_mismatches(standin, contacts)
