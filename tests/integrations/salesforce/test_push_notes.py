"""The push's notes and objects, by calling the sync functions against the stand-in:

- a Task Salesforce refuses leaves the contact's values held (allOrNone false) and only the
  note behind, sent later, once;
- notes as Tasks in an org whose Task field cannot be an External ID (SALESFORCE_TASK_MATCH
  "query"): looked for first, created only where missing, never while an earlier push may
  still land;
- Leads and Person Accounts pushed to their own objects, their Tasks naming a Contact or
  a Lead.

Every test ends on what the stand-in holds. The run with workers killed mid-push is
tests/reliability/test_salesforce_task_fallback.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from audit.models import AuditAction, AuditEntry
from integrations import core
from integrations.salesforce import sync
from integrations.salesforce.client import (
    ContactPush,
    SalesforceClient,
    SalesforceSettings,
    note_task,
)
from preferences.models import Contact, ContactKind, ContactSync, SyncStatus
from preferences.services import apply_change
from tests import factories

pytestmark = pytest.mark.django_db

TASK_FIELD = "Preference_Change_Id__c"
VERSION = "Preference_Version__c"
TOKEN = ("POST", "/services/oauth2/token")
QUERY = ("GET", "/services/data/v60.0/query/")
COMPOSITE = ("POST", "/services/data/v60.0/composite")


def _sync(contact: Contact) -> ContactSync:
    return ContactSync.objects.get(contact=contact, target=sync.TARGET)


def _change(contact: Contact, actor: Any, note: str = "Asked.", **change: Any) -> str:
    """Apply a change; returns its note's change id (the Task's)."""
    apply_change(contact=contact, actor=actor, source="staff", note=note, **change)
    return f"PD-{AuditEntry.objects.filter(contact=contact).latest('id').pk}"


def _landed_unrecorded(who_id: str, change_id: str) -> None:
    """An earlier push of this note reached Salesforce, but its answer never reached the
    app: the Task is there and the app does not know."""
    task = note_task(
        change_id=change_id,
        who_id=who_id,
        subject="Preference change",
        description="(the earlier push)",
        activity_date=timezone.now().date(),
    )
    with SalesforceClient() as client:
        [result] = client.push([ContactPush(who_id, {}, [task])])
    assert result.ok


def _tasks_by_change(standin: Any) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for task in standin.tasks():
        found.setdefault(task[TASK_FIELD], []).append(task)
    return found


# --- a refused Task leaves the values held --------------------------------------------------


def test_a_task_refused_for_now_leaves_the_preferences_held_and_the_note_is_sent_later_once(
    standin, synced_contact, specialist
):
    change_id = _change(
        synced_contact, specialist, "Please stop emailing.", opt_out={"email": True}
    )
    _landed_unrecorded(synced_contact.salesforce_id, change_id)
    task_id = standin.task(change_id)["Id"]
    standin.reject_record(
        task_id, "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", times=1
    )
    started = timezone.now()

    outcome = sync.push_batch()

    assert (outcome.synced, outcome.retry, outcome.failed) == (0, 1, 0)
    remote = standin.contact(synced_contact.salesforce_id)
    assert (remote["HasOptedOutOfEmail"], remote[VERSION]) == (True, 1)
    row = _sync(synced_contact)
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.PENDING, 1, 0)
    assert row.attempts == 1 and row.next_attempt_at > started
    assert row.last_error.startswith(
        "Salesforce holds the preferences; the note will be sent again: UNABLE_TO_LOCK_ROW: "
        f"Task {change_id}: "
    )
    assert sync.push_batch().claimed == 0  # backing off, as after any transient failure

    ContactSync.objects.filter(pk=row.pk).update(next_attempt_at=None)
    assert sync.push_batch().synced == 1

    row.refresh_from_db()
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.SYNCED, 1, 1)
    assert (row.attempts, row.last_error) == (0, "")
    tasks = _tasks_by_change(standin)
    assert list(tasks) == [change_id] and len(tasks[change_id]) == 1
    assert tasks[change_id][0]["Id"] == task_id
    assert "Please stop emailing." in tasks[change_id][0]["Description"]  # the app's note now


def _validation_rule_on_the_task(standin: Any, contact: Contact, change_id: str) -> Callable:
    _landed_unrecorded(contact.salesforce_id, change_id)
    task_id = standin.task(change_id)["Id"]
    standin.reject_record(
        task_id,
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "A completed task needs a Type",
        fields=["Type"],
    )
    return standin.clear_faults


def _no_access_to_the_description(standin: Any, contact: Contact, change_id: str) -> Callable:
    # Field-level security: the integration user may not write Task.Description.
    standin.set_field("Task", "Description", createable=False, updateable=False)
    return lambda: standin.set_field("Task", "Description", createable=True, updateable=True)


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (_validation_rule_on_the_task, "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        (_no_access_to_the_description, "INVALID_FIELD_FOR_INSERT_UPDATE"),
    ],
    ids=["validation-rule", "field-access"],
)
def test_a_task_refused_for_good_fails_the_note_not_the_preferences(
    standin, synced_contact, specialist, system_user, system_client, refusal, code
):
    change_id = _change(synced_contact, specialist, "No more calls.", opt_out={"phone": True})
    fixed = refusal(standin, synced_contact, change_id)

    outcome = sync.push_batch()

    assert (outcome.synced, outcome.failed) == (0, 1)
    assert standin.contact(synced_contact.salesforce_id)["DoNotCall"] is True
    row = _sync(synced_contact)
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.FAILED, 1, 0)
    assert row.last_error.startswith(
        f"Salesforce holds the preferences but refused the note: {code}: Task {change_id}: "
    )
    audit = AuditEntry.objects.get(contact=synced_contact, action=AuditAction.SYNC_FAILED)
    assert "refused the note" in audit.note
    page = system_client.get(reverse("preferences:sync_problems")).content.decode()
    assert escape(row.last_error) in page
    assert "refused the update" not in page
    assert sync.push_batch().claimed == 0  # waits for a person

    fixed()
    core.retry_failed(sync_id=row.pk, actor=system_user)
    assert sync.push_batch().synced == 1

    row.refresh_from_db()
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.SYNCED, 1, 1)
    tasks = _tasks_by_change(standin)
    assert list(tasks) == [change_id] and len(tasks[change_id]) == 1
    assert "No more calls." in tasks[change_id][0]["Description"]


def test_a_refused_note_never_holds_back_a_later_change_and_goes_with_it_once_fixed(
    standin, synced_contact, specialist, system_user
):
    standin.set_field("Task", "Description", createable=False, updateable=False)
    first = _change(synced_contact, specialist, "Stop emailing.", opt_out={"email": True})
    sync.push_batch()
    assert _sync(synced_contact).status == SyncStatus.FAILED

    second = _change(synced_contact, specialist, "And no calls.", opt_out={"phone": True})
    sync.push_batch()

    remote = standin.contact(synced_contact.salesforce_id)
    assert (remote["HasOptedOutOfEmail"], remote["DoNotCall"], remote[VERSION]) == (True, True, 2)
    row = _sync(synced_contact)
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.FAILED, 2, 0)
    assert standin.tasks() == []

    standin.set_field("Task", "Description", createable=True, updateable=True)
    core.retry_failed(sync_id=row.pk, actor=system_user)
    sync.push_batch()

    row.refresh_from_db()
    assert (row.status, row.notes_version) == (SyncStatus.SYNCED, 2)
    tasks = _tasks_by_change(standin)
    assert sorted(tasks) == sorted([first, second])
    assert all(len(found) == 1 for found in tasks.values())


# --- notes where the Task field cannot be an External ID --------------------------------------


@pytest.fixture
def plain_task_field(standin: Any) -> None:
    """An org whose Activity custom field cannot be an External ID: the change id is a
    plain text field, not unique either, so nothing in Salesforce stops a duplicate."""
    standin.set_field("Task", TASK_FIELD, externalId=False, idLookup=False, unique=False)


@pytest.fixture
def query_mode(settings: Any, plain_task_field: None) -> Any:
    settings.SALESFORCE_TASK_MATCH = "query"
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    return settings


def test_upsert_mode_on_a_field_that_is_no_external_id_refuses_the_notes_not_the_values(
    standin, plain_task_field, synced_contact, specialist
):
    change_id = _change(synced_contact, specialist, opt_out={"email": True})

    outcome = sync.push_batch()

    assert outcome.failed == 1
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is True
    row = _sync(synced_contact)
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.FAILED, 1, 0)
    assert row.last_error == (
        "Salesforce holds the preferences but refused the note: NOT_FOUND: "
        f"Task {change_id}: Provided external ID field does not exist or is not accessible: "
        f"{TASK_FIELD}"
    )
    assert standin.tasks() == []


def test_query_mode_creates_one_task_per_change_and_never_a_second(
    standin, query_mode, categories, specialist
):
    contacts = [
        factories.make_contact(salesforce_id=standin.add_contact(LastName=f"Q{n}"))
        for n in range(3)
    ]
    expected: dict[str, str] = {}
    for contact in contacts:
        expected[_change(contact, specialist, "Stop emailing.", opt_out={"email": True})] = (
            contact.salesforce_id
        )
        expected[_change(contact, specialist, "No calls.", opt_out={"phone": True})] = (
            contact.salesforce_id
        )
    log_start = len(standin.call_log)

    assert sync.push_batch().synced == 3

    tasks = _tasks_by_change(standin)
    assert sorted(tasks) == sorted(expected)
    assert all(len(found) == 1 for found in tasks.values())
    assert all(found[0]["WhoId"] == expected[key] for key, found in tasks.items())
    assert [call for call in standin.call_log[log_start:] if call != TOKEN] == [QUERY, COMPOSITE]
    first_ids = {key: found[0]["Id"] for key, found in tasks.items()}
    for contact in contacts:
        assert standin.contact(contact.salesforce_id)["DoNotCall"] is True
        row = _sync(contact)
        assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.SYNCED, 2, 2)
        assert row.uncertain_since is None  # the mark made before sending, cleared

    # Every answer lost: all of it goes again, and the query finds every Task.
    ContactSync.objects.filter(contact__in=contacts).update(
        status=SyncStatus.PENDING, synced_version=0, notes_version=0
    )
    assert sync.push_batch().synced == 3
    # A new change: only its Task is created.
    newest = _change(
        contacts[0],
        specialist,
        "Back in for email.",
        opt_out={"email": False},
        consent=factories.consent(),
    )
    sync.push_batch()

    tasks = _tasks_by_change(standin)
    assert sorted(tasks) == sorted([*expected, newest])
    assert all(len(found) == 1 for found in tasks.values())
    assert {key: found[0]["Id"] for key, found in tasks.items() if key != newest} == first_ids


def test_query_mode_holds_notes_back_while_an_unanswered_push_may_still_land(
    standin, query_mode, synced_contact, specialist
):
    change_id = _change(synced_contact, specialist, opt_out={"email": True})
    unanswered = timezone.now() - timedelta(minutes=1)  # a push that got no answer
    ContactSync.objects.filter(contact=synced_contact).update(uncertain_since=unanswered)

    outcome = sync.push_batch()

    may_go = unanswered + timedelta(seconds=660)
    assert (outcome.retry, outcome.next_attempt_at) == (1, may_go)
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is True
    assert standin.tasks() == []
    row = _sync(synced_contact)
    assert (row.status, row.synced_version, row.notes_version) == (SyncStatus.PENDING, 1, 0)
    assert (row.next_attempt_at, row.attempts, row.uncertain_since) == (may_go, 0, unanswered)

    # That push lands late, its Task with it; then it can no longer be running.
    _landed_unrecorded(synced_contact.salesforce_id, change_id)
    ContactSync.objects.filter(contact=synced_contact).update(
        uncertain_since=timezone.now() - timedelta(minutes=12), next_attempt_at=None
    )
    assert sync.verify_uncertain().held == 1
    assert sync.push_batch().synced == 1

    tasks = _tasks_by_change(standin)
    assert list(tasks) == [change_id] and len(tasks[change_id]) == 1
    row.refresh_from_db()
    assert (row.status, row.notes_version, row.uncertain_since) == (SyncStatus.SYNCED, 1, None)


def test_query_mode_a_worker_that_dies_waiting_leaves_its_notes_to_be_created_once(
    standin, query_mode, synced_contact, specialist, monkeypatch
):
    change_id = _change(synced_contact, specialist, opt_out={"email": True})
    on_the_way: list[list[ContactPush]] = []

    def dies_while_the_request_is_on_its_way(self: Any, records: Any) -> Any:
        on_the_way.append(list(records))
        raise SystemExit("killed")  # as kill -9 would: nothing recorded

    monkeypatch.setattr(SalesforceClient, "push", dies_while_the_request_is_on_its_way)
    with pytest.raises(SystemExit):
        sync.push_batch()
    monkeypatch.undo()
    assert _sync(synced_contact).uncertain_since is not None  # marked before sending

    # The lease runs out; another worker takes the row while the request is still on its
    # way. The values go; the note waits.
    ContactSync.objects.filter(contact=synced_contact).update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )
    assert sync.push_batch().retry == 1
    assert standin.tasks() == []
    with SalesforceClient() as client:  # now the dead worker's request lands
        client.push(on_the_way[0])
    assert len(standin.tasks()) == 1

    ContactSync.objects.filter(contact=synced_contact).update(
        uncertain_since=timezone.now() - timedelta(minutes=12), next_attempt_at=None
    )
    assert sync.push_batch().synced == 1
    tasks = _tasks_by_change(standin)
    assert list(tasks) == [change_id] and len(tasks[change_id]) == 1


def test_query_mode_looks_for_200_change_ids_a_query(standin, query_mode):
    ids = [standin.add_contact(LastName=f"C{n}") for n in range(101)]
    pushes = [
        ContactPush(
            contact_id,
            {"DoNotCall": True},
            [
                note_task(
                    change_id=f"PD-{n}-{k}",
                    who_id=contact_id,
                    subject="Do not call",
                    description="Asked.",
                    activity_date=timezone.now().date(),
                )
                for k in range(2)
            ],
        )
        for n, contact_id in enumerate(ids)
    ]

    with SalesforceClient() as client:
        results = client.push(pushes)
        again = client.push(pushes)

    assert all(result.ok for result in [*results, *again])
    assert standin.call_log.count(QUERY) == 4  # 202 change ids: two queries a push
    assert len(standin.tasks()) == 202


def test_task_match_must_be_upsert_or_query(settings):
    settings.SALESFORCE_LOGIN_URL = "https://example.my.salesforce.com"
    settings.SALESFORCE_CLIENT_ID = "id"
    settings.SALESFORCE_CLIENT_SECRET = "secret"
    settings.SALESFORCE_TASK_MATCH = "query"
    assert SalesforceSettings.from_django().task_match == "query"
    settings.SALESFORCE_TASK_MATCH = "lookup"
    with pytest.raises(ImproperlyConfigured, match="SALESFORCE_TASK_MATCH"):
        SalesforceSettings.from_django()


# --- Leads and Person Accounts ------------------------------------------------------------


@pytest.fixture
def lead(standin: Any, categories: Any) -> Contact:
    lead_id = standin.add_lead(
        FirstName="Lee", LastName="Ng", Company="Alumni", HasOptedOutOfEmail=False, DoNotCall=False
    )
    return factories.make_contact(kind=ContactKind.LEAD, salesforce_id=lead_id, ascend_id="")


@pytest.fixture
def person_account(standin: Any, settings: Any, categories: Any) -> Contact:
    settings.SALESFORCE_PERSON_ACCOUNTS = True
    standin.configure(person_accounts=True)
    account_id = standin.add_person_account(
        FirstName="Pat", LastName="Rivera", PersonHasOptedOutOfEmail=False, PersonDoNotCall=False
    )
    return factories.make_contact(
        kind=ContactKind.PERSON_ACCOUNT,
        salesforce_id=account_id,
        person_contact_id=standin.account(account_id)["PersonContactId"],
    )


def test_a_leads_opt_out_reaches_the_lead_and_its_note_names_the_lead(standin, lead, specialist):
    change_id = _change(lead, specialist, "Stop emailing me.", opt_out={"email": True})

    assert sync.push_batch().synced == 1

    remote = standin.lead(lead.salesforce_id)
    assert (remote["HasOptedOutOfEmail"], remote["DoNotCall"], remote[VERSION]) == (True, False, 1)
    assert "Newsletter__c" not in remote  # a Lead has no category checkboxes
    task = standin.task(change_id)
    assert task["WhoId"] == lead.salesforce_id
    assert "Stop emailing me." in task["Description"]
    assert _sync(lead).status == SyncStatus.SYNCED


def test_a_person_accounts_preferences_reach_the_accounts_person_fields(
    standin, person_account, specialist
):
    change_id = _change(
        person_account,
        specialist,
        "No calls, newsletter only.",
        opt_out={"phone": True},
        categories=["newsletter"],
    )

    assert sync.push_batch().synced == 1

    account = standin.account(person_account.salesforce_id)
    assert (account["PersonDoNotCall"], account["PersonHasOptedOutOfEmail"]) == (True, False)
    assert (account["Newsletter__pc"], account["Events__pc"]) == (True, False)
    assert account["Preference_Version__pc"] == 1
    task = standin.task(change_id)
    assert task["WhoId"] == person_account.person_contact_id  # the Account cannot be a WhoId
    assert _sync(person_account).status == SyncStatus.SYNCED


def test_contacts_leads_and_person_accounts_go_in_one_call(
    standin, synced_contact, lead, person_account, specialist
):
    for contact in (synced_contact, lead, person_account):
        _change(contact, specialist, opt_out={"email": True})
    log_start = len(standin.call_log)

    assert sync.push_batch().synced == 3

    assert standin.call_log[log_start:].count(COMPOSITE) == 1
    assert standin.contact(synced_contact.salesforce_id)["HasOptedOutOfEmail"] is True
    assert standin.lead(lead.salesforce_id)["HasOptedOutOfEmail"] is True
    assert standin.account(person_account.salesforce_id)["PersonHasOptedOutOfEmail"] is True
    assert sorted(task["WhoId"] for task in standin.tasks()) == sorted(
        [synced_contact.salesforce_id, lead.salesforce_id, person_account.person_contact_id]
    )


@pytest.mark.parametrize("kind", ["lead", "person_account"])
def test_the_read_back_of_an_unanswered_push_reads_each_object(
    standin, lead, person_account, specialist, settings, kind
):
    contact = lead if kind == "lead" else person_account
    field = "HasOptedOutOfEmail" if kind == "lead" else "PersonHasOptedOutOfEmail"
    object_name = "Lead" if kind == "lead" else "Account"
    _change(contact, specialist, opt_out={"email": True})
    sync.push_batch()
    # An older push, unanswered at the time, lands late with the old value.
    with SalesforceClient() as client:
        client.push(
            [
                ContactPush(
                    contact.salesforce_id, {field: False}, object_name=object_name, version_field=""
                )
            ]
        )
    settings.SALESFORCE_MAX_REQUEST_SECONDS = 660
    ContactSync.objects.filter(contact=contact).update(
        uncertain_since=timezone.now() - timedelta(minutes=12)
    )

    outcome = sync.verify_uncertain()

    assert (outcome.read, outcome.gone, outcome.pushed_again) == (1, 0, 1)
    sync.push_batch()
    remote = (
        standin.lead(contact.salesforce_id)
        if kind == "lead"
        else standin.account(contact.salesforce_id)
    )
    assert remote[field] is True
