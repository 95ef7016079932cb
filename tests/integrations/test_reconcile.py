"""The nightly reconciliation (docs/design.md, "Reconciliation"): what Salesforce (through the
stand-in's Bulk API 2.0), Ascend (its opt-out file) and the app's own data hold, compared
with the app; each discrepancy kept, seen again, or closed when it disappears."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from integrations import reconcile
from integrations.models import Discrepancy, ReconcileRun
from integrations.salesforce.client import forget_sessions
from preferences.models import Contact, ContactSync
from preferences.services import apply_change
from standins.salesforce import running_standin
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def standin(settings: Any, categories: Any) -> Any:
    forget_sessions()
    with running_standin() as server:
        settings.SALESFORCE_ENABLED = True
        settings.SALESFORCE_LOGIN_URL = server.url
        settings.SALESFORCE_CLIENT_ID = server.client_id
        settings.SALESFORCE_CLIENT_SECRET = server.client_secret
        settings.SALESFORCE_CA_BUNDLE = server.ca_path
        settings.SALESFORCE_TIMEOUT = 10
        yield server
    forget_sessions()


@pytest.fixture
def dropbox(settings: Any, tmp_path: Path) -> Path:
    settings.ASCEND_DESTINATION = str(tmp_path / "dropbox")
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    (tmp_path / "dropbox").mkdir()
    return tmp_path / "dropbox"


def _open(system: str) -> dict[str, str]:
    """key -> kind of every open discrepancy of a system."""
    return dict(Discrepancy.objects.open().filter(system=system).values_list("key", "kind"))


def write_ascend_file(
    dropbox: Path,
    contacts: list[Contact],
    opted_out: dict[str, set[str]],
    *,
    day: str,
    exported: datetime | None = None,
) -> Path:
    """Ascend's nightly export of current opt-outs, as the README defines it."""
    path = dropbox / f"ascend-optouts-{day}.csv"
    exported = (exported or timezone.now() + timedelta(minutes=1)).astimezone(UTC)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["ascend_id", "salesforce_id", "HasOptedOutOfEmail", "DoNotCall", "exported_at"]
        )
        for contact in contacts:
            out = opted_out.get(contact.ascend_id, set())
            writer.writerow(
                [
                    contact.ascend_id,
                    contact.salesforce_id,
                    "TRUE" if "email" in out else "FALSE",
                    "TRUE" if "phone" in out else "FALSE",
                    exported.strftime("%Y-%m-%dT%H:%M:%SZ"),
                ]
            )
    return path


# --- Salesforce ---------------------------------------------------------------------------------


def test_values_changed_in_salesforce_are_found_and_nothing_else(standin):
    contacts = factories.make_contacts_in_step(standin, 40)
    flipped = contacts[::10]  # a data load that ticked the opt-out on four of them
    for contact in flipped:
        standin.external_update(contact.salesforce_id, HasOptedOutOfEmail=True)
    standin.external_update(contacts[1].salesforce_id, Newsletter__c=True)

    (run,) = reconcile.run(["salesforce"])

    assert not run.failed, run.detail
    assert run.compared == 40 and run.skipped == 0
    assert _open("salesforce") == {
        **{c.salesforce_id: "differs" for c in flipped},
        contacts[1].salesforce_id: "differs",
    }
    found = Discrepancy.objects.get(key=flipped[0].salesforce_id)
    assert found.contact == flipped[0]
    assert found.details["app"]["opted_out"] == []
    assert found.details["remote"]["opted_out"] == ["email"]
    newsletter = Discrepancy.objects.get(key=contacts[1].salesforce_id)
    assert newsletter.details["remote"]["categories"] == ["newsletter"]
    assert run.found == {"differs": 5} and run.opened == 5


def test_contacts_on_one_side_only_are_found(standin):
    contacts = factories.make_contacts_in_step(standin, 3)
    (theirs,) = standin.add_contacts([{"FirstName": "Only", "LastName": "There"}])
    ours = factories.make_contact()

    reconcile.run(["salesforce"])

    assert _open("salesforce") == {theirs: "unknown_to_us", ours.salesforce_id: "unknown_to_them"}
    assert Discrepancy.objects.get(key=theirs).contact is None
    assert contacts  # in step: none of them is listed


def test_leads_are_compared_on_their_opt_outs_and_deleted_contacts_are_not_looked_for(standin):
    in_step = standin.add_lead(LastName="Moreno", Company="Prospective")
    opted_out_there = standin.add_lead(
        LastName="Haddad", Company="Prospective", HasOptedOutOfEmail=True
    )
    for salesforce_id in (in_step, opted_out_there):
        factories.make_contact(salesforce_id=salesforce_id, kind="lead", ascend_id="")
    gone = factories.make_contact(inactive_since=timezone.now())  # deleted in Salesforce

    (run,) = reconcile.run(["salesforce"])

    assert not run.failed, run.detail
    assert _open("salesforce") == {opted_out_there: "differs"}
    found = Discrepancy.objects.get(key=opted_out_there)
    assert found.details["remote"]["opted_out"] == ["email"]
    assert found.details["remote"]["categories"] is None  # a Lead has none in Salesforce
    assert gone.salesforce_id not in _open("salesforce")


def test_a_change_on_its_way_to_salesforce_is_not_a_discrepancy(standin, specialist):
    contacts = factories.make_contacts_in_step(standin, 2)
    apply_change(  # pending: the push has not happened yet
        contact=contacts[0], actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )

    (run,) = reconcile.run(["salesforce"])

    assert _open("salesforce") == {}
    assert run.skipped == 1


def test_a_discrepancy_seen_again_keeps_its_first_sighting_and_one_gone_is_closed(standin):
    contacts = factories.make_contacts_in_step(standin, 3)
    for contact in contacts[:2]:
        standin.external_update(contact.salesforce_id, DoNotCall=True)
    (first,) = reconcile.run(["salesforce"])
    seen = Discrepancy.objects.get(key=contacts[0].salesforce_id)
    standin.external_update(contacts[1].salesforce_id, DoNotCall=False)  # put right there

    (second,) = reconcile.run(["salesforce"])

    again = Discrepancy.objects.get(pk=seen.pk)
    assert again.first_seen == seen.first_seen and again.last_seen > seen.last_seen
    assert again.is_open and again.run_id == second.pk
    gone = Discrepancy.objects.get(key=contacts[1].salesforce_id)
    assert gone.resolution == "disappeared" and gone.resolved_at is not None
    assert (second.opened, second.closed) == (0, 1)
    assert first.opened == 2


def test_a_failed_reading_closes_nothing_and_says_why(standin, settings):
    contacts = factories.make_contacts_in_step(standin, 2)
    standin.external_update(contacts[0].salesforce_id, DoNotCall=True)
    reconcile.run(["salesforce"])
    standin.fail("http_503", times=50, path_contains="/jobs/query")

    (run,) = reconcile.run(["salesforce"])

    assert run.failed and "SERVER_UNAVAILABLE" in run.detail
    assert _open("salesforce") == {contacts[0].salesforce_id: "differs"}


def test_the_command_reports_each_system_and_fails_when_one_could_not_be_read(
    standin, dropbox, capsys
):
    contacts = factories.make_contacts_in_step(standin, 2)
    write_ascend_file(dropbox, contacts, {}, day="20261201")

    call_command("reconcile")
    out = capsys.readouterr().out

    assert "salesforce: done" in out and "ascend: done" in out and "app: done" in out
    for path in dropbox.iterdir():
        path.unlink()
    with pytest.raises(CommandError, match="could not be reconciled"):
        call_command("reconcile", "--system", "ascend")
    assert "No Ascend opt-out file" in capsys.readouterr().out


# --- Ascend -------------------------------------------------------------------------------------


def test_ascends_file_is_compared_on_the_ascend_id(dropbox, categories):
    contacts = [factories.make_contact() for _ in range(5)]
    theirs_only = factories.make_contact()
    write_ascend_file(
        dropbox,
        [*contacts[:4], theirs_only],
        {contacts[0].ascend_id: {"email"}, contacts[1].ascend_id: {"phone"}},
        day="20261201",
    )
    theirs_only.delete()  # Ascend holds a contact the app does not

    (run,) = reconcile.run(["ascend"])

    assert not run.failed, run.detail
    assert _open("ascend") == {
        contacts[0].ascend_id: "differs",
        contacts[1].ascend_id: "differs",
        contacts[4].ascend_id: "unknown_to_them",
        theirs_only.ascend_id: "unknown_to_us",
    }
    assert run.detail.startswith("ascend-optouts-20261201.csv")


def test_the_newest_ascend_file_is_the_one_read(dropbox, categories):
    contact = factories.make_contact()
    write_ascend_file(dropbox, [contact], {contact.ascend_id: {"email"}}, day="20261130")
    write_ascend_file(dropbox, [contact], {}, day="20261201")

    reconcile.run(["ascend"])

    assert _open("ascend") == {}


def test_an_ascend_file_older_than_an_opt_out_does_not_judge_it(dropbox, categories, specialist):
    contact = factories.make_contact()
    exported = timezone.now() - timedelta(hours=2)  # before the opt-out reached Ascend
    write_ascend_file(dropbox, [contact], {}, day="20261201", exported=exported)
    apply_change(
        contact=contact, actor=specialist, source="staff", note="Stop.", opt_out={"email": True}
    )
    ContactSync.objects.filter(contact=contact).update(status="synced", synced_at=timezone.now())

    (run,) = reconcile.run(["ascend"])

    assert _open("ascend") == {} and run.skipped == 1


# --- the app's own data -------------------------------------------------------------------------


def test_an_email_shared_by_several_contacts_is_found_once(categories):
    twins = [factories.make_contact(email="shared@example.edu") for _ in range(2)]
    factories.make_contact()

    (run,) = reconcile.run(["app"])

    found = Discrepancy.objects.get(system="app")
    assert (found.kind, found.key, found.contact) == (
        "duplicate_email",
        "shared@example.edu",
        twins[0],
    )
    assert [c["id"] for c in found.details["contacts"]] == [t.pk for t in twins]
    assert run.found == {"duplicate_email": 1}


def test_only_one_reconciliation_runs_at_a_time(categories):
    from django.db import connections

    from lib.locks import AdvisoryLock

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [int(AdvisoryLock.RECONCILE)])
        with pytest.raises(reconcile.ReconcileBusy):
            reconcile.run(["app"])
        assert not ReconcileRun.objects.exists()
    finally:
        other.close()


def test_nightly_counts_add_up_each_nights_runs(categories):
    night = datetime(2026, 11, 30, 9, tzinfo=UTC)
    for system, found in (("salesforce", {"differs": 3}), ("ascend", {"differs": 1})):
        ReconcileRun.objects.create(system=system, started_at=timezone.now(), found=found)
    ReconcileRun.objects.create(system="app", started_at=night, found={"duplicate_email": 2})

    counts = dict(reconcile.nightly_counts(days=400))

    assert sum(counts[max(counts)].values()) == 4
    assert next(iter(counts.values())) == {"duplicate_email": 2}
