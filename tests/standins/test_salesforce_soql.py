"""The stand-in's SOQL is the SOQL and SOSL Reference's, in the REST query and in Bulk API 2.0
query jobs alike, over real HTTPS.

"Date Formats and Date Literals in WHERE": a dateTime is ``YYYY-MM-DDThh:mm:ssZ``,
``YYYY-MM-DDThh:mm:ss+hh:mm`` or ``YYYY-MM-DDThh:mm:ss-hh:mm`` (whole seconds), a date
``YYYY-MM-DD``, and the relative date literals stand for ranges of whole days; anything else
is a MALFORMED_QUERY. A dateTime value filters dateTime fields only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from standins.salesforce import SalesforceStandIn, running_standin
from tests.standins.salesforce_api import (
    api,
    bulk_job,
    bulk_rows,
    error_code,
    next_second,
    query,
    records,
    soql_time,
    window_start,
)


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _window(since: str) -> str:
    return f"SELECT Id FROM Contact WHERE SystemModstamp > {since} ORDER BY SystemModstamp, Id"


# --- dateTime literals ------------------------------------------------------------------------


def test_each_documented_datetime_form_is_taken_and_means_the_same_instant(standin):
    session = api(standin)
    before = standin.add_contact(LastName="Before")
    boundary = datetime.fromisoformat(window_start(standin.contact(before)["SystemModstamp"]))
    after = standin.add_contact(LastName="After")
    forms = [
        boundary.strftime("%Y-%m-%dT%H:%M:%SZ"),
        (boundary + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
        (boundary - timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%S-08:00"),
    ]

    found = [[r["Id"] for r in records(session, standin, _window(form))] for form in forms]
    in_bulk = [[r["Id"] for r in bulk_rows(session, standin, _window(form))] for form in forms]

    assert found == [[after]] * 3
    assert in_bulk == [[after]] * 3


@pytest.mark.parametrize(
    "literal",
    [
        "2024-01-01T00:00:00.000Z",  # fractional seconds: what the app sent until now
        "2024-01-01T00:00:00.5Z",
        "2024-01-01T00:00:00.000+0000",
        "2024-01-01T00:00:00+0000",  # an offset without its colon
        "2024-01-01T00:00:00",  # no zone
        "2024-01-01T00:00Z",  # no seconds
        "2024-13-01T00:00:00Z",  # no such month
    ],
)
def test_any_other_datetime_form_is_a_malformed_query_in_rest_and_bulk(standin, literal):
    session = api(standin)
    soql = _window(literal)

    rest = query(session, standin, soql)
    rest_all = query(session, standin, soql, "queryAll")
    bulk = bulk_job(session, standin, soql)

    for response in (rest, rest_all, bulk):
        assert response.status_code == 400
        assert error_code(response) == "MALFORMED_QUERY"
    message = rest.json()[0]["message"]
    column = soql.index(literal) + 1
    assert f"ERROR at Row:1:Column:{column}\n" in message  # the reference's error pointer
    assert literal in message
    assert bulk.json()[0]["message"] == message


@pytest.mark.parametrize(
    "value",
    ["2024-01-01", "'2024-01-01T00:00:00Z'", "LastName", "5"],
    ids=["date", "quoted", "a-field", "number"],
)
def test_a_datetime_field_compared_with_anything_but_a_datetime_is_refused(standin, value):
    response = query(
        api(standin), standin, f"SELECT Id FROM Contact WHERE SystemModstamp > {value}"
    )

    assert response.status_code == 400
    assert error_code(response) in ("INVALID_QUERY_FILTER_OPERATOR", "MALFORMED_QUERY")


def test_a_quoted_datetime_is_the_documented_filter_error(standin):
    response = query(
        api(standin), standin, "SELECT Id FROM Contact WHERE LastModifiedDate > '2024-01-01'"
    )

    assert response.json() == [
        {
            "message": "value of filter criterion for field 'LastModifiedDate' must be of type "
            "dateTime and should not be enclosed in quotes",
            "errorCode": "INVALID_QUERY_FILTER_OPERATOR",
        }
    ]


# --- date literals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("SystemModstamp = TODAY", True),
        ("SystemModstamp = today", True),
        ("SystemModstamp > YESTERDAY", True),
        ("SystemModstamp < TODAY", False),
        ("SystemModstamp = LAST_N_DAYS:1", True),
        ("SystemModstamp = NEXT_N_DAYS:3", False),
        ("SystemModstamp = THIS_MONTH", True),
        ("SystemModstamp = LAST_YEAR", False),
        ("SystemModstamp >= THIS_YEAR", True),
    ],
)
def test_date_literals_are_ranges_of_whole_days(standin, where, expected):
    contact_id = standin.add_contact()

    found = records(api(standin), standin, f"SELECT Id FROM Contact WHERE {where}")

    assert ([r["Id"] for r in found] == [contact_id]) is expected


def test_an_unknown_date_literal_is_a_malformed_query(standin):
    response = query(
        api(standin), standin, "SELECT Id FROM Contact WHERE CreatedDate > LAST_DECADE"
    )

    assert error_code(response) == "MALFORMED_QUERY"


# --- the rest of WHERE, ORDER BY, LIMIT ---------------------------------------------------------


def test_conditions_combine_as_the_reference_says(standin):
    session = api(standin)
    ada = standin.add_contact(FirstName="Ada", LastName="Okafor", Email="ada@example.org")
    bob = standin.add_contact(FirstName="Bob", LastName="Okafor", DoNotCall=True)
    cy = standin.add_contact(FirstName="Cy", LastName="Garcia", Email="cy@example.edu")

    def ids(where: str) -> set[str]:
        return {r["Id"] for r in records(session, standin, f"SELECT Id FROM Contact WHERE {where}")}

    assert ids("LastName = 'okafor'") == {ada, bob}  # text compares without case
    assert ids("LastName = 'Okafor' AND DoNotCall = true") == {bob}
    assert ids("(LastName = 'Garcia' OR DoNotCall = true) AND FirstName != 'Bob'") == {cy}
    assert ids("NOT LastName = 'Okafor'") == {cy}
    assert ids("Email LIKE '%.edu'") == {cy}
    assert ids("Email = null") == {bob}
    assert ids("Email != null") == {ada, cy}
    assert ids(f"Id IN ('{ada}', '{cy[:15]}')") == {ada, cy}
    assert ids(f"Id NOT IN ('{ada}')") == {bob, cy}
    assert ids("FirstName IN ('ada', 'Cy')") == {ada, cy}


def test_mixing_and_with_or_needs_parentheses(standin):
    response = query(
        api(standin),
        standin,
        "SELECT Id FROM Contact WHERE LastName = 'A' AND FirstName = 'B' OR DoNotCall = true",
    )

    assert error_code(response) == "MALFORMED_QUERY"
    assert "unexpected token: 'OR'" in response.json()[0]["message"]


def test_order_by_limit_and_offset(standin):
    session = api(standin)
    standin.add_contacts(
        [{"LastName": name, "FirstName": first} for name, first in
         [("B", "x"), ("A", None), ("C", "y"), ("A", "z")]]
    )  # fmt: skip

    def names(clauses: str) -> list[tuple[str, str | None]]:
        found = records(session, standin, f"SELECT LastName, FirstName FROM Contact {clauses}")
        return [(r["LastName"], r["FirstName"]) for r in found]

    assert names("ORDER BY LastName, FirstName") == [
        ("A", None), ("A", "z"), ("B", "x"), ("C", "y")
    ]  # fmt: skip
    assert names("ORDER BY LastName DESC, FirstName DESC NULLS FIRST") == [
        ("C", "y"), ("B", "x"), ("A", None), ("A", "z")
    ]  # fmt: skip
    assert names("ORDER BY FirstName NULLS LAST LIMIT 2") == [("B", "x"), ("C", "y")]
    assert names("ORDER BY LastName, FirstName LIMIT 2 OFFSET 1") == [("A", "z"), ("B", "x")]


def test_a_query_without_where_reads_every_record_and_pages(standin):
    standin.add_contacts([{"LastName": f"C{n}"} for n in range(5)])
    standin.configure(page_size=2)
    session = api(standin)

    first = query(session, standin, "SELECT Id, Name FROM Contact").json()
    second = session.get(standin.url + first["nextRecordsUrl"]).json()

    assert (first["totalSize"], len(first["records"]), first["done"]) == (5, 2, False)
    assert first["records"][0]["Name"] == "C0"  # Name: the contact's full name, worked out
    assert len(second["records"]) == 2


# --- the contact's fields the app reads -------------------------------------------------------


def test_the_ascend_id_and_last_modified_date_are_selectable(standin):
    session = api(standin)
    contact_id = standin.add_contact(LastName="Okafor", Ascend_Id__c="2000000042")
    stamp = standin.contact(contact_id)["LastModifiedDate"]

    (row,) = records(
        session,
        standin,
        f"SELECT Id, Ascend_Id__c, LastModifiedDate FROM Contact WHERE Id = '{contact_id}'",
    )
    (csv_row,) = bulk_rows(
        session, standin, "SELECT Id, Ascend_Id__c, LastModifiedDate FROM Contact"
    )
    by_ascend = records(
        session, standin, "SELECT Id FROM Contact WHERE Ascend_Id__c = '2000000042'"
    )

    assert row["Ascend_Id__c"] == "2000000042"
    assert datetime.fromisoformat(row["LastModifiedDate"]) == stamp
    assert row["LastModifiedDate"].endswith("+0000")
    assert csv_row["Ascend_Id__c"] == "2000000042"
    assert datetime.fromisoformat(csv_row["LastModifiedDate"]) == stamp
    assert [r["Id"] for r in by_ascend] == [contact_id]


def test_the_ascend_id_and_category_fields_have_configurable_names():
    with running_standin(
        ascend_id_field="Advance_Id__c", category_fields=["Alumni_News__c"]
    ) as server:
        session = api(server)
        server.add_contact(Advance_Id__c="A-1")
        described = {f["name"]: f for f in server.describe("Contact")["fields"]}
        ok = query(session, server, "SELECT Advance_Id__c, Alumni_News__c FROM Contact")
        lead_fields = {f["name"] for f in server.describe("Lead")["fields"]}

    assert described["Advance_Id__c"]["externalId"] is True
    assert described["Alumni_News__c"]["type"] == "boolean"
    assert "Ascend_Id__c" not in described and "Newsletter__c" not in described
    assert ok.json()["records"][0] == {
        "attributes": ok.json()["records"][0]["attributes"],
        "Advance_Id__c": "A-1",
        "Alumni_News__c": False,  # a checkbox never set reads false, never null
    }
    # The category checkboxes are Contact fields; the org's Lead has none of them.
    assert "Alumni_News__c" not in lead_fields


def test_a_contact_schema_declared_without_the_ascend_id_refuses_it():
    with running_standin(contact_fields=["Newsletter__c"]) as server:
        response = query(api(server), server, "SELECT Ascend_Id__c FROM Contact")

    assert error_code(response) == "INVALID_FIELD"


def test_windows_read_through_the_stamp_index_agree_with_a_full_scan(standin):
    session = api(standin)
    first = standin.add_contact(LastName="First")
    since = window_start(standin.contact(first)["SystemModstamp"])
    later = standin.add_contacts([{"LastName": f"L{n}"} for n in range(3)])
    next_second(standin.contact(later[0])["SystemModstamp"])
    standin.external_update(first, DoNotCall=True)  # now in the window too, after `later`
    until = soql_time(datetime.now(UTC) + timedelta(seconds=2))

    indexed = records(
        session,
        standin,
        f"SELECT Id FROM Contact WHERE SystemModstamp > {since} AND SystemModstamp <= {until} "
        "ORDER BY SystemModstamp, Id",
    )
    scanned = records(
        session,
        standin,
        f"SELECT Id FROM Contact WHERE (SystemModstamp > {since} OR LastName = 'none') "
        "ORDER BY SystemModstamp, Id",
    )

    assert [r["Id"] for r in indexed] == [*later, first]
    assert [r["Id"] for r in scanned] == [*later, first]
