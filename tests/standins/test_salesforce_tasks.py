"""Tasks in an org whose ``Preference_Change_Id__c`` is, or is not, an External ID, over real
HTTPS.

Upsert is "available for objects if the object has an external ID field or a field with the
idLookup field property" ("upsert()", SOAP API Developer Guide); on any other field the REST
API answers 404 NOT_FOUND "Provided external ID field does not exist or is not accessible"
("Upsert Records Using sObject Rows by External ID"). Plain creation (``POST sobjects/Task``,
``POST composite/sobjects`` with ``allOrNone``) and SOQL work either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from standins.salesforce import API_USER_ID, SalesforceStandIn, running_standin
from tests.standins.salesforce_api import API, api, bulk_rows, records

PLAIN = {"Task": {"Preference_Change_Id__c": {"externalId": False, "unique": False}}}


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


@pytest.fixture
def plain() -> Iterator[SalesforceStandIn]:
    """An org whose Preference_Change_Id__c is an ordinary text field."""
    with running_standin(schema=PLAIN) as server:
        yield server


def _task(change: str, who: str, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Task"},
        "Preference_Change_Id__c": change,
        "WhoId": who,
        "Subject": "Email opt-out",
        "Status": "Completed",
        **fields,
    }


# --- upserts on a field that is not an External ID ----------------------------------------------


def test_upserts_on_a_field_that_is_not_an_external_id_are_refused(plain):
    who = plain.add_contact()
    session = api(plain)
    single = session.patch(
        f"{plain.url}{API}/sobjects/Task/Preference_Change_Id__c/PD-1",
        json={"WhoId": who, "Subject": "Note"},
    )
    collection = session.patch(
        f"{plain.url}{API}/composite/sobjects/Task/Preference_Change_Id__c",
        json={"allOrNone": False, "records": [_task("PD-1", who)]},
    )
    composite = session.post(
        f"{plain.url}{API}/composite",
        json={
            "allOrNone": False,
            "compositeRequest": [
                {
                    "method": "PATCH",
                    "url": f"{API}/composite/sobjects/Task/Preference_Change_Id__c",
                    "referenceId": "tasks",
                    "body": {"allOrNone": False, "records": [_task("PD-1", who)]},
                }
            ],
        },
    )

    expected = [
        {
            "message": "Provided external ID field does not exist or is not accessible: "
            "Preference_Change_Id__c",
            "errorCode": "NOT_FOUND",
        }
    ]
    assert (single.status_code, single.json()) == (404, expected)
    assert (collection.status_code, collection.json()) == (404, expected)
    (answer,) = composite.json()["compositeResponse"]
    assert (answer["httpStatusCode"], answer["body"]) == (404, expected)
    assert plain.tasks() == []


def test_the_same_upsert_works_where_the_field_is_an_external_id(standin):
    who = standin.add_contact()

    response = api(standin).patch(
        f"{standin.url}{API}/composite/sobjects/Task/Preference_Change_Id__c",
        json={"allOrNone": False, "records": [_task("PD-1", who)]},
    )

    assert response.json()[0]["created"] is True


# --- plain creation ---------------------------------------------------------------------------


def test_post_sobjects_task_creates_one(plain):
    who = plain.add_contact()

    response = api(plain).post(
        f"{plain.url}{API}/sobjects/Task",
        json={"Preference_Change_Id__c": "PD-7", "WhoId": who, "Subject": "Email opt-out"},
    )

    assert response.status_code == 201
    body = response.json()
    assert body == {"id": body["id"], "success": True, "errors": []}
    assert body["id"].startswith("00T")
    (task,) = plain.tasks()
    assert (task["Id"], task["WhoId"], task["Preference_Change_Id__c"]) == (body["id"], who, "PD-7")
    assert task["Status"] == "Not Started"  # defaulted on create
    assert task["CreatedById"] == task["OwnerId"] == API_USER_ID


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"WhoId": "003Sb0000000ZZZ"}, "FIELD_INTEGRITY_EXCEPTION"),
        ({"Foo__c": "x"}, "INVALID_FIELD"),
        ({"CreatedDate": "2024-01-01T00:00:00Z"}, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ({"Id": "00TSb0000000001"}, "INVALID_FIELD_FOR_INSERT_UPDATE"),
    ],
)
def test_a_task_it_cannot_create_is_refused(plain, fields, code):
    response = api(plain).post(f"{plain.url}{API}/sobjects/Task", json={"Subject": "x", **fields})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == code
    assert plain.tasks() == []


@pytest.mark.parametrize("all_or_none", [True, False])
def test_a_collection_creates_tasks_all_or_none_or_as_many_as_it_can(plain, all_or_none):
    who = plain.add_contact()
    tasks = [_task("PD-1", who), _task("PD-2", "003Sb0000000ZZZ"), _task("PD-3", who)]

    response = api(plain).post(
        f"{plain.url}{API}/composite/sobjects", json={"allOrNone": all_or_none, "records": tasks}
    )

    results = response.json()
    assert response.status_code == 200
    assert results[1]["errors"][0]["statusCode"] == "FIELD_INTEGRITY_EXCEPTION"
    if all_or_none:
        assert [r["success"] for r in results] == [False, False, False]
        assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        assert plain.tasks() == []
    else:
        assert [r["success"] for r in results] == [True, False, True]
        assert sorted(t["Preference_Change_Id__c"] for t in plain.tasks()) == ["PD-1", "PD-3"]
        assert {t["Id"] for t in plain.tasks()} == {results[0]["id"], results[2]["id"]}


def test_a_plain_field_takes_the_same_value_twice_and_a_unique_one_does_not(plain, standin):
    def create_twice(server: SalesforceStandIn) -> list[dict[str, Any]]:
        who = server.add_contact()
        return list(
            api(server)
            .post(
                f"{server.url}{API}/composite/sobjects",
                json={"records": [_task("PD-1", who), _task("PD-1", who)]},
            )
            .json()
        )

    plain_results = create_twice(plain)
    unique_results = create_twice(standin)

    assert [r["success"] for r in plain_results] == [True, True]
    assert [r["success"] for r in unique_results] == [True, False]
    error = unique_results[1]["errors"][0]
    assert error["statusCode"] == "DUPLICATE_VALUE"
    assert error["message"].startswith("duplicate value found: Preference_Change_Id__c")


def test_an_upsert_matching_several_records_answers_300():
    changes = {"Task": {"Preference_Change_Id__c": {"unique": False}}}  # External ID, not unique
    with running_standin(schema=changes) as server:
        who = server.add_contact()
        session = api(server)
        session.post(
            f"{server.url}{API}/composite/sobjects",
            json={"records": [_task("PD-1", who), _task("PD-1", who)]},
        )
        single = session.patch(
            f"{server.url}{API}/sobjects/Task/Preference_Change_Id__c/PD-1", json={"Subject": "x"}
        )
        collection = session.patch(
            f"{server.url}{API}/composite/sobjects/Task/Preference_Change_Id__c",
            json={"records": [_task("PD-1", who)]},
        ).json()

    assert single.status_code == 300
    assert len(single.json()) == 2
    assert all(url.startswith(f"{API}/sobjects/Task/00T") for url in single.json())
    assert collection[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"


def test_composite_creates_tasks_and_rolls_them_back_all_or_none(plain):
    who = plain.add_contact()

    response = api(plain).post(
        f"{plain.url}{API}/composite",
        json={
            "allOrNone": True,
            "compositeRequest": [
                {
                    "method": "POST",
                    "url": f"{API}/sobjects/Task",
                    "referenceId": "note",
                    "body": {"Preference_Change_Id__c": "PD-1", "WhoId": who},
                },
                {
                    "method": "POST",
                    "url": f"{API}/sobjects/Task",
                    "referenceId": "broken",
                    "body": {"Preference_Change_Id__c": "PD-2", "WhoId": "003Sb0000000ZZZ"},
                },
            ],
        },
    )

    first, second = response.json()["compositeResponse"]
    assert first["httpStatusCode"] == 400
    assert first["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert second["httpStatusCode"] == 400
    assert second["body"][0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    assert plain.tasks() == []  # the first one, created, is rolled back


# --- reading tasks ----------------------------------------------------------------------------


def test_tasks_are_found_by_their_change_ids(plain):
    who = plain.add_contact()
    session = api(plain)
    session.post(
        f"{plain.url}{API}/composite/sobjects",
        json={"records": [_task(f"PD-{n}", who, ActivityDate="2026-03-02") for n in range(4)]},
    )
    soql = (
        "SELECT Id, Preference_Change_Id__c, WhoId, ActivityDate FROM Task "
        "WHERE Preference_Change_Id__c IN ('PD-1', 'PD-3', 'PD-9') ORDER BY Preference_Change_Id__c"
    )

    rest = records(session, plain, soql)
    bulk = bulk_rows(session, plain, soql)

    assert [r["Preference_Change_Id__c"] for r in rest] == ["PD-1", "PD-3"]
    assert rest[0]["attributes"]["type"] == "Task"
    assert (rest[0]["WhoId"], rest[0]["ActivityDate"]) == (who, "2026-03-02")
    assert [row["Preference_Change_Id__c"] for row in bulk] == ["PD-1", "PD-3"]


def test_a_task_is_read_and_updated_by_its_id(plain):
    who = plain.add_contact()
    session = api(plain)
    task_id = session.post(
        f"{plain.url}{API}/sobjects/Task", json={"Preference_Change_Id__c": "PD-1", "WhoId": who}
    ).json()["id"]

    updated = session.patch(f"{plain.url}{API}/sobjects/Task/{task_id}", json={"Subject": "Note"})
    read = session.get(f"{plain.url}{API}/sobjects/Task/{task_id}", params={"fields": "Subject"})

    assert updated.status_code == 204
    assert read.json() == {
        "attributes": {"type": "Task", "url": f"{API}/sobjects/Task/{task_id}"},
        "Subject": "Note",
    }
