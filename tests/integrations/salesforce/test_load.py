"""The initial load, manage.py load_contacts (docs/design.md, "Initial load"), against the
Salesforce stand-in's Bulk API 2.0 over HTTPS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from audit.models import AuditAction, AuditEntry
from integrations.models import ContactLoad
from integrations.salesforce import inbound, load, objects
from integrations.salesforce.client import SalesforceClient
from lib.channels import Channel
from preferences.models import ChannelPreference, Contact, ContactSync, Subscription
from standins.salesforce import SalesforceStandIn
from tests import factories

# The load writes pages on connections of its own (two writer threads): what they commit
# must be there to see, and they must see what a test set up.
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[3]
JOBS = "/services/data/v60.0/jobs/query"
NOTE = "Read from Salesforce when the app first saw this Contact."


def run_load(*args: str) -> str:
    out = StringIO()
    call_command("load_contacts", *args, stdout=out)
    return out.getvalue()


def result_reads(standin: SalesforceStandIn, job_id: str, since: int = 0) -> int:
    """How many result pages of a query job the stand-in answered (its call log has the
    path, not the locator)."""
    return standin.call_log[since:].count(("GET", f"{JOBS}/{job_id}/results"))


def jobs_created(standin: SalesforceStandIn, since: int = 0) -> int:
    return standin.call_log[since:].count(("POST", JOBS))


def contact(salesforce_id: str) -> Contact:
    return Contact.objects.get(salesforce_id=salesforce_id)


@pytest.fixture
def three(standin: SalesforceStandIn, categories: Any) -> list[str]:
    """Ada opted out of email (her newsletter tick cannot stand: docs/design.md, rule 3), Bo
    of phone with two categories, Cy with nothing to record."""
    return standin.add_contacts(
        [
            {
                "FirstName": " Ada ",
                "LastName": "Okafor",
                "Email": "Ada.Okafor@Example.EDU ",
                "Phone": "+1 (303) 555-0101",
                "Ascend_Id__c": "2000000001",
                "HasOptedOutOfEmail": True,
                "DoNotCall": False,
                "Newsletter__c": True,
            },
            {
                "FirstName": "Bo",
                "LastName": "Chen",
                "Email": "bo.chen@example.edu",
                "Ascend_Id__c": "2000000002",
                "DoNotCall": True,
                "Events__c": True,
                "Giving__c": True,
            },
            {"FirstName": "Cy", "LastName": "Diaz", "Email": "cy@example.edu"},
        ]
    )


def test_load_creates_every_contact_with_its_identity_and_starting_state(
    standin: SalesforceStandIn, three: list[str]
) -> None:
    ada_id, bo_id, cy_id = three

    output = run_load("--page-size", "2")

    ada, bo, cy = contact(ada_id), contact(bo_id), contact(cy_id)
    assert (ada.first_name, ada.last_name, ada.email) == ("Ada", "Okafor", "ada.okafor@example.edu")
    assert (ada.phone, ada.ascend_id, ada.kind) == ("+1 (303) 555-0101", "2000000001", "contact")
    assert (bo.ascend_id, cy.ascend_id) == ("2000000002", "")
    assert all(c.identity_read_at is not None for c in (ada, bo, cy))
    assert (ada.version, bo.version, cy.version) == (1, 1, 0)

    prefs = {
        (p.contact_id, p.channel): p
        for p in ChannelPreference.objects.filter(contact__in=[ada, bo, cy])
    }
    assert set(prefs) == {(ada.pk, Channel.EMAIL), (bo.pk, Channel.PHONE)}
    assert all(p.opted_out and p.source == "salesforce" and p.note == NOTE for p in prefs.values())
    subscribed = set(Subscription.objects.values_list("contact_id", "category__key"))
    # Ada's tick cannot stand (docs/design.md, rule 3).
    assert subscribed == {(bo.pk, "events"), (bo.pk, "giving")}

    entries = {
        e.contact_id: e for e in AuditEntry.objects.filter(action=AuditAction.STARTING_STATE)
    }
    assert set(entries) == {ada.pk, bo.pk}
    assert entries[ada.pk].channels == [Channel.EMAIL]
    assert entries[ada.pk].after["opted_out"] == {"email": True, "phone": False}
    assert entries[ada.pk].after["categories"] == []
    assert entries[bo.pk].channels == [Channel.EMAIL, Channel.PHONE]
    assert entries[bo.pk].after["categories"] == ["events", "giving"]
    assert {e.note for e in entries.values()} == {NOTE}

    # Salesforce holds what it told us; the other targets are behind.
    syncs = {(s.contact_id, s.target): s for s in ContactSync.objects.all()}
    assert {key for key in syncs if key[1] == "salesforce"} == {
        (ada.pk, "salesforce"),
        (bo.pk, "salesforce"),
    }
    assert syncs[ada.pk, "salesforce"].status == "synced"
    assert syncs[ada.pk, "salesforce"].synced_version == 1
    assert syncs[ada.pk, "ascend"].status == "pending"
    assert not any(key[0] == cy.pk for key in syncs)

    run = ContactLoad.objects.get()
    assert run.finished_at is not None
    assert (run.created, run.updated, run.with_opt_outs, run.ascend_collisions) == (3, 0, 2, 0)
    assert run.progress["Contact"]["pages"] == 2
    assert run.progress["Contact"]["rows"] == 3
    assert run.api_calls == standin.api_calls  # the stand-in answered every call it counted
    assert "Contacts created:      3 (2 with opt-outs)" in output
    assert "Contact: 3 records in 2 pages" in output


def test_the_load_writes_the_rows_the_pull_writes_for_a_new_record(
    standin: SalesforceStandIn, categories: Any
) -> None:
    fields = {
        "FirstName": "Dana",
        "LastName": "Ito",
        "Phone": "+44 20 7946 0000",
        "HasOptedOutOfEmail": False,
        "DoNotCall": True,
        "Events__c": True,
        "Research_News__c": True,
    }
    [loaded_id] = standin.add_contacts([{**fields, "Email": "Dana@a.example"}])
    run_load()
    # The pull's one-at-a-time creation of a twin, from the record as the REST API gives it.
    [pulled_id] = standin.add_contacts([{**fields, "Email": "Dana@b.example"}])
    with SalesforceClient() as client:
        names = objects.CONTACT.read_fields(inbound.active_category_fields())
        [remote] = client.get_records("Contact", [pulled_id], names[1:])
    assert (
        inbound.create(
            objects.CONTACT, remote, inbound.active_category_fields(), now=timezone.now()
        )
        == "created"
    )

    def rows(salesforce_id: str) -> dict[str, Any]:
        found = contact(salesforce_id)
        return {
            "contact": (found.kind, found.first_name, found.phone, found.version, found.country),
            "preferences": sorted(
                ChannelPreference.objects.filter(contact=found).values_list(
                    "channel", "opted_out", "source", "note", "changed_by"
                )
            ),
            "subscriptions": sorted(
                Subscription.objects.filter(contact=found).values_list("category__key", flat=True)
            ),
            "entries": list(
                AuditEntry.objects.filter(contact=found).values_list(
                    "action",
                    "actor_label",
                    "source",
                    "contact_version",
                    "channels",
                    "before",
                    "after",
                    "note",
                )
            ),
            "syncs": sorted(
                ContactSync.objects.filter(contact=found).values_list(
                    "target", "synced_version", "notes_version", "status", "attempts"
                )
            ),
        }

    loaded, pulled = rows(loaded_id), rows(pulled_id)
    assert loaded == pulled
    assert loaded["subscriptions"] == ["events", "research"]
    assert len(loaded["entries"]) == 1


def test_a_second_load_updates_identity_and_creates_nothing_twice(
    standin: SalesforceStandIn, three: list[str]
) -> None:
    ada_id, _bo_id, cy_id = three
    run_load()
    entries = AuditEntry.objects.count()
    standin.external_update(ada_id, FirstName="Adaeze", Email="ADAEZE@example.edu")
    # A preference changed in Salesforce is the pull's and the reconciliation's to settle.
    standin.external_update(cy_id, DoNotCall=True, Newsletter__c=True)

    output = run_load()

    assert Contact.objects.count() == 3
    ada, cy = contact(ada_id), contact(cy_id)
    assert (ada.first_name, ada.email, ada.version) == ("Adaeze", "adaeze@example.edu", 1)
    assert (cy.version, cy.channel_preferences.count(), cy.subscriptions.count()) == (0, 0, 0)
    assert AuditEntry.objects.count() == entries
    second = ContactLoad.objects.order_by("pk").last()
    assert second is not None and second.finished_at is not None
    assert (second.created, second.updated, second.unchanged) == (0, 1, 2)
    assert ContactLoad.objects.filter(finished_at__isnull=True).count() == 0
    assert "Known contacts:        1 updated, 2 unchanged" in output


@pytest.mark.parametrize("writers", [1, 2])
def test_an_interrupted_load_carries_on_from_the_first_page_it_had_not_written(
    standin: SalesforceStandIn, categories: Any, monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    ids = standin.add_contacts(
        [{"FirstName": f"P{n}", "LastName": "Page", "DoNotCall": n % 2 == 0} for n in range(5)]
    )
    real_write = load.write_page
    calls: list[int] = []

    def fail_on_page_two(*args: Any, **kwargs: Any) -> load.PageResult:
        calls.append(1)  # pages start their statements in order
        if len(calls) == 2:
            raise RuntimeError("the process dies while writing page 2")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(load, "write_page", fail_on_page_two)
    with pytest.raises(RuntimeError, match="dies while writing page 2"):
        run_load("--page-size", "2", "--writers", str(writers))
    monkeypatch.undo()

    run = ContactLoad.objects.get()
    assert run.finished_at is None
    assert (run.progress["Contact"]["pages"], run.progress["Contact"]["rows"]) == (1, 2)
    assert set(Contact.objects.values_list("salesforce_id", flat=True)) == set(ids[:2])
    job_id = run.progress["Contact"]["job_id"]
    log_at_failure = len(standin.call_log)
    # Page 1, and what the writers had in hand: page 2 (and page 3, with two writers).
    assert 2 <= result_reads(standin, job_id) <= 1 + writers

    output = run_load("--page-size", "2", "--writers", str(writers))

    assert output.startswith(f"Resuming contact load {run.pk}")
    assert set(Contact.objects.values_list("salesforce_id", flat=True)) == set(ids)
    assert ContactLoad.objects.get().finished_at is not None
    assert AuditEntry.objects.filter(action=AuditAction.STARTING_STATE).count() == 3
    # The same job, from page 2 on: page 1 is not read again; only Leads get a new job.
    assert result_reads(standin, job_id, since=log_at_failure) == 2
    assert jobs_created(standin, since=log_at_failure) == 1


def _database_url() -> str:
    db = connection.settings_dict
    user = quote(db.get("USER") or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def test_a_load_killed_mid_page_reads_no_finished_page_again(
    standin: SalesforceStandIn, categories: Any
) -> None:
    ids = standin.add_contacts(
        [{"FirstName": f"K{n}", "LastName": "Kill", "HasOptedOutOfEmail": True} for n in range(5)]
    )
    # Every result page answers late, so the process can be caught reading page 2.
    standin.fail("latency", seconds=1.5, path_contains="/results")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SALESFORCE_", "CELERY_"))},
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": "tests-only-secret-key",
        "SALESFORCE_ENABLED": "true",
        "SALESFORCE_LOGIN_URL": standin.url,
        "SALESFORCE_CLIENT_ID": standin.client_id,
        "SALESFORCE_CLIENT_SECRET": standin.client_secret,
        "SALESFORCE_CA_BUNDLE": standin.ca_path,
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "load_contacts", "--page-size", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            run = ContactLoad.objects.first()
            if run is not None and run.progress.get("Contact", {}).get("pages") == 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the load never finished page 1 (exit {process.poll()})")
        time.sleep(0.3)  # now waiting for page 2's answer
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    standin.clear_faults()
    run = ContactLoad.objects.get()
    committed = run.progress["Contact"]["pages"]
    assert committed >= 1 and not run.progress["Contact"]["finished"]
    job_id = run.progress["Contact"]["job_id"]
    log_at_kill = len(standin.call_log)

    run_load("--page-size", "2")

    assert set(Contact.objects.values_list("salesforce_id", flat=True)) == set(ids)
    assert ContactLoad.objects.get().finished_at is not None
    assert AuditEntry.objects.filter(action=AuditAction.STARTING_STATE).count() == 5
    # The rerun read the pages not committed, and no other; the killed run had at most a
    # page per writer in hand (two) beyond the committed ones.
    assert result_reads(standin, job_id, since=log_at_kill) == 3 - committed
    assert result_reads(standin, job_id) <= 3 + load.WRITERS


def test_leads_are_loaded_as_leads_and_converted_ones_are_left_to_their_contact(
    standin: SalesforceStandIn, categories: Any
) -> None:
    kept, converted = standin.add_leads(
        [
            {
                "FirstName": "Li",
                "LastName": "Wu",
                "Email": "Li@Example.edu",
                "HasOptedOutOfEmail": True,
            },
            {"FirstName": "Mo", "LastName": "Ng", "Email": "mo@example.edu"},
        ]
    )
    converted_into = standin.convert_lead(converted)

    output = run_load()

    lead = contact(kept)
    assert (lead.kind, lead.email, lead.ascend_id, lead.version) == (
        "lead",
        "li@example.edu",
        "",
        1,
    )
    assert lead.channel_preferences.get().channel == Channel.EMAIL
    assert not Contact.objects.filter(salesforce_id=converted).exists()
    assert contact(converted_into).kind == "contact"
    assert Contact.objects.count() == 2
    assert "Lead: 1 records in 1 pages" in output


def test_person_accounts_are_loaded_through_their_account(
    standin: SalesforceStandIn, categories: Any, settings: Any
) -> None:
    standin.set_person_accounts(True)
    settings.SALESFORCE_PERSON_ACCOUNTS = True
    account_id = standin.add_person_account(
        FirstName="Noor",
        LastName="Haddad",
        PersonEmail="Noor@Example.edu",
        PersonDoNotCall=True,
        Giving__pc=True,
    )

    run_load()

    person = contact(account_id)
    person_contact_id = standin.account(account_id)["PersonContactId"]  # type: ignore[index]
    assert (person.kind, person.email) == ("person_account", "noor@example.edu")
    assert person.person_contact_id == person_contact_id
    assert person.channel_preferences.get().channel == Channel.PHONE
    assert list(person.subscriptions.values_list("category__key", flat=True)) == ["giving"]
    # Its person contact is a Contact in Salesforce too, but written through the Account.
    assert Contact.objects.count() == 1


def test_an_ascend_id_another_contact_has_is_not_taken_and_is_counted(
    standin: SalesforceStandIn, categories: Any
) -> None:
    factories.make_contact(ascend_id="777")
    known_id, clash_id, first_id, second_id = standin.add_contacts(
        [
            {"FirstName": "Kim", "LastName": "Known", "Ascend_Id__c": "777"},
            {"FirstName": "Cal", "LastName": "Clash", "Ascend_Id__c": "777"},
            {"FirstName": "Fay", "LastName": "First", "Ascend_Id__c": "888"},
            {"FirstName": "Sam", "LastName": "Second", "Ascend_Id__c": "888"},
        ]
    )
    # A contact the app already knows, whose Ascend ID in Salesforce another contact has.
    factories.make_contact(salesforce_id=known_id, ascend_id="555", first_name="Old")

    output = run_load()

    known = contact(known_id)
    assert (known.first_name, known.ascend_id) == ("Kim", "555")
    assert contact(clash_id).ascend_id == ""
    assert (contact(first_id).ascend_id, contact(second_id).ascend_id) == ("888", "")
    assert ContactLoad.objects.get().ascend_collisions == 3
    assert "Ascend ID collisions:  3" in output


def test_a_load_taken_over_by_another_process_stops(
    standin: SalesforceStandIn, three: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_page = SalesforceClient.bulk_page
    pages: list[int] = []

    def page_then_overtaken(self: SalesforceClient, *args: Any, **kwargs: Any) -> Any:
        answer = real_page(self, *args, **kwargs)
        pages.append(1)
        if len(pages) == 2:  # meanwhile another process wrote page 2 and moved on
            run = ContactLoad.objects.get()
            progress = {**run.progress["Contact"], "pages": 2, "locator": "elsewhere"}
            ContactLoad.objects.filter(pk=run.pk).update(progress={"Contact": progress})
        return answer

    monkeypatch.setattr(SalesforceClient, "bulk_page", page_then_overtaken)

    with pytest.raises(CommandError, match="moved on without this process"):
        run_load("--page-size", "2")
    assert Contact.objects.count() == 2  # page 1 only


def test_the_load_needs_salesforce_enabled(settings: Any) -> None:
    settings.SALESFORCE_ENABLED = False
    with pytest.raises(CommandError, match="not enabled"):
        run_load()
    assert not ContactLoad.objects.exists()
