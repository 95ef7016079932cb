"""Deleted and merged contacts, as Salesforce documents them, over real HTTPS: ``query``
leaves them out, ``queryAll`` (REST, "Execute a SOQL Query that Includes Deleted Items", and
a Bulk API 2.0 ``queryAll`` job) finds them with ``IsDeleted`` true; a merge deletes the
losing contact with ``MasterRecordId`` set to the winner, updates the winner and moves the
loser's related records to it ("merge()", SOAP API Developer Guide; "Triggers and Merge
Statements", Apex Developer Guide)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from standins.salesforce import (
    ADMIN_USER_ID,
    SalesforceStandIn,
    SalesforceStandInClient,
    running_standin,
)
from tests.standins.salesforce_api import API, api, bulk_rows, next_second, records, window_start

# The query "merge()" suggests for finding merged records.
MERGED = (
    "SELECT Id, IsDeleted, MasterRecordId FROM Contact "
    "WHERE IsDeleted = true AND MasterRecordId != null"
)


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def test_a_merge_deletes_the_loser_and_points_it_at_the_survivor(standin):
    survivor = standin.add_contact(LastName="Okafor", Email="ada@example.org")
    loser = standin.add_contact(LastName="Okafor", Email="ada.okafor@example.org")
    before = standin.contact(survivor)["SystemModstamp"]
    next_second(before)  # else the merge shares the contacts' whole-second stamp

    stamp = standin.merge_contacts(survivor, loser)

    gone, kept = standin.contact(loser), standin.contact(survivor)
    assert gone["IsDeleted"] is True
    assert gone["MasterRecordId"] == survivor
    assert kept["IsDeleted"] is False
    assert kept["SystemModstamp"] == gone["SystemModstamp"] == stamp > before
    assert gone["LastModifiedById"] == ADMIN_USER_ID  # a person merged them, not the app


def test_query_leaves_merged_contacts_out_and_query_all_finds_them(standin):
    session = api(standin)
    survivor, loser = standin.add_contact(), standin.add_contact()
    standin.merge_contacts(survivor, loser)

    live = records(session, standin, "SELECT Id FROM Contact")
    merged = records(session, standin, MERGED, "queryAll")
    merged_by_query = records(session, standin, MERGED)
    bulk = bulk_rows(session, standin, MERGED, "queryAll")

    assert [r["Id"] for r in live] == [survivor]
    assert [(r["Id"], r["IsDeleted"], r["MasterRecordId"]) for r in merged] == [
        (loser, True, survivor)
    ]
    assert merged_by_query == []
    assert [(row["Id"], row["IsDeleted"], row["MasterRecordId"]) for row in bulk] == [
        (loser, "true", survivor)
    ]


def test_a_deletion_has_no_master_record(standin):
    session = api(standin)
    kept, deleted = standin.add_contact(), standin.add_contact()
    standin.delete_contact(deleted)

    every = records(
        session, standin, "SELECT Id, IsDeleted, MasterRecordId FROM Contact", "queryAll"
    )
    bulk = bulk_rows(session, standin, "SELECT Id, IsDeleted FROM Contact", "queryAll")

    assert [(r["Id"], r["IsDeleted"], r["MasterRecordId"]) for r in every] == [
        (kept, False, None),
        (deleted, True, None),
    ]
    assert [(row["Id"], row["IsDeleted"]) for row in bulk] == [(kept, "false"), (deleted, "true")]


def test_the_window_query_on_query_all_sees_a_merge_as_changes_to_both(standin):
    session = api(standin)
    survivor, loser = standin.add_contact(), standin.add_contact()
    since = window_start(standin.contact(loser)["SystemModstamp"])
    standin.merge_contacts(survivor, loser)
    soql = (
        "SELECT Id, IsDeleted, MasterRecordId FROM Contact "
        f"WHERE SystemModstamp > {since} ORDER BY SystemModstamp, Id"
    )

    changed = records(session, standin, soql, "queryAll")
    changed_live = records(session, standin, soql)

    assert sorted((r["Id"], r["IsDeleted"]) for r in changed) == sorted(
        [(survivor, False), (loser, True)]
    )
    assert [r["Id"] for r in changed_live] == [survivor]


def test_a_merged_contact_can_no_longer_be_updated_or_read(standin):
    survivor, loser = standin.add_contact(), standin.add_contact()
    standin.merge_contacts(survivor, loser)
    session = api(standin)

    update = session.patch(f"{standin.url}{API}/sobjects/Contact/{loser}", json={"DoNotCall": True})
    read = session.get(f"{standin.url}{API}/sobjects/Contact/{loser}")

    assert (update.status_code, update.json()[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")
    assert (read.status_code, read.json()[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")


def test_the_losers_tasks_move_to_the_survivor(standin):
    survivor, loser = standin.add_contact(), standin.add_contact()
    session = api(standin)
    session.patch(
        f"{standin.url}{API}/sobjects/Task/Preference_Change_Id__c/PD-1",
        json={"WhoId": loser, "Subject": "Email opt-out"},
    )

    standin.merge_contacts(survivor, loser)

    assert standin.task("PD-1")["WhoId"] == survivor


@pytest.mark.parametrize("case", ["same", "deleted", "unknown"])
def test_a_merge_that_cannot_be_is_refused(standin, case):
    first, second = standin.add_contact(), standin.add_contact()
    if case == "deleted":
        standin.delete_contact(second)
    loser = {"same": first, "deleted": second, "unknown": "003Sb0000000ZZZ"}[case]

    with pytest.raises((ValueError, KeyError)):
        standin.merge_contacts(first, loser)


def test_contacts_are_merged_over_the_control_api(standin):
    remote = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    survivor, loser = remote.add_contacts([{"LastName": "A"}, {"LastName": "B"}])

    stamp = remote.merge_contacts(survivor, loser)

    assert remote.contact(loser)["MasterRecordId"] == survivor
    assert remote.contact(survivor)["SystemModstamp"] == stamp
    remote.close()
