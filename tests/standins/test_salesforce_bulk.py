"""The Salesforce stand-in answers Bulk API 2.0 query jobs as the Bulk API 2.0 Developer
Guide describes them, over real HTTPS, and simple-salesforce's bulk2 client reads them."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce

from standins.salesforce import (
    ADMIN_USER_ID,
    API_USER_ID,
    MAX_RESULT_RECORDS,
    SalesforceStandIn,
    id18,
    running_standin,
)
from tests.standins.salesforce_api import next_second, window_start

API = "/services/data/v60.0"
JOBS = f"{API}/jobs/query"


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _http(server: SalesforceStandIn) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = server.ca_path
    return session


def _token(server: SalesforceStandIn) -> str:
    response = _http(server).post(
        server.url + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _api(server: SalesforceStandIn) -> requests.Session:
    session = _http(server)
    session.headers["Authorization"] = "Bearer " + _token(server)
    return session


@pytest.fixture
def api(standin: SalesforceStandIn) -> requests.Session:
    return _api(standin)


def _create(api: requests.Session, server: SalesforceStandIn, soql: str, **options: Any) -> Any:
    response = api.post(server.url + JOBS, json={"operation": "query", "query": soql, **options})
    assert response.status_code == 200, response.text
    return response.json()


def _info(api: requests.Session, server: SalesforceStandIn, job_id: str) -> Any:
    response = api.get(f"{server.url}{JOBS}/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _results(
    api: requests.Session, server: SalesforceStandIn, job_id: str, **params: Any
) -> requests.Response:
    return api.get(f"{server.url}{JOBS}/{job_id}/results", params=params)


def _completed(api: requests.Session, server: SalesforceStandIn, soql: str, **options: Any) -> str:
    job_id = str(_create(api, server, soql, **options)["id"])
    assert _info(api, server, job_id)["state"] == "JobComplete"
    return job_id


def _all_rows(api: requests.Session, server: SalesforceStandIn, job_id: str, max_records: int):
    """Every result set in turn: (rows as dicts, Sforce-Locator, Sforce-NumberOfRecords)."""
    locator = None
    while True:
        params: dict[str, Any] = {"maxRecords": max_records}
        if locator:
            params["locator"] = locator
        response = _results(api, server, job_id, **params)
        assert response.status_code == 200, response.text
        rows = list(csv.DictReader(io.StringIO(response.text)))
        locator = response.headers["Sforce-Locator"]
        yield rows, locator, int(response.headers["Sforce-NumberOfRecords"])
        if locator == "null":
            return


# --- the job's life -------------------------------------------------------------------------


def test_creating_a_query_job_answers_the_documented_job_in_upload_complete(standin, api):
    job = _create(
        api, standin, "SELECT Id, LastName FROM Contact", columnDelimiter="COMMA", lineEnding="LF"
    )

    assert list(job) == [
        "id",
        "operation",
        "object",
        "createdById",
        "createdDate",
        "systemModstamp",
        "state",
        "concurrencyMode",
        "contentType",
        "apiVersion",
        "lineEnding",
        "columnDelimiter",
    ]
    assert job["id"].startswith("750") and len(job["id"]) == 18
    assert (job["operation"], job["object"], job["state"]) == ("query", "Contact", "UploadComplete")
    assert job["createdById"] == API_USER_ID
    assert (job["concurrencyMode"], job["contentType"], job["apiVersion"]) == (
        "Parallel",
        "CSV",
        60.0,
    )
    assert (job["lineEnding"], job["columnDelimiter"]) == ("LF", "COMMA")
    assert job["createdDate"].endswith("+0000")
    assert standin.api_calls == 1


def test_a_job_is_in_progress_for_the_configured_reads_then_complete(api, standin):
    standin.configure(bulk_in_progress_polls=2)
    for _ in range(3):
        standin.add_contact(LastName="Okafor")
    job_id = _create(api, standin, "SELECT Id FROM Contact")["id"]

    states = [_info(api, standin, job_id) for _ in range(4)]

    assert [info["state"] for info in states] == [
        "InProgress",
        "InProgress",
        "JobComplete",
        "JobComplete",
    ]
    assert states[0]["numberRecordsProcessed"] == 0
    done = states[2]
    assert done["jobType"] == "V2Query"
    assert done["numberRecordsProcessed"] == 3
    assert done["retries"] == 0
    assert isinstance(done["totalProcessingTime"], int)
    assert done["systemModstamp"] >= done["createdDate"]


def test_by_default_a_job_completes_at_once(api, standin):
    standin.add_contact(LastName="Okafor")
    job_id = _create(api, standin, "SELECT Id FROM Contact")["id"]

    # Even without a status read first, as a client that skips polling would ask.
    response = _results(api, standin, job_id)

    assert response.status_code == 200
    assert response.headers["Sforce-NumberOfRecords"] == "1"
    assert _info(api, standin, job_id)["state"] == "JobComplete"


def test_results_before_the_job_is_complete_are_refused(api, standin):
    standin.configure(bulk_in_progress_polls=1)
    job_id = _create(api, standin, "SELECT Id FROM Contact")["id"]

    before = _results(api, standin, job_id)
    assert _info(api, standin, job_id)["state"] == "InProgress"
    during = _results(api, standin, job_id)
    assert _info(api, standin, job_id)["state"] == "JobComplete"
    after = _results(api, standin, job_id)

    assert (before.status_code, during.status_code, after.status_code) == (400, 400, 200)
    assert before.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert "UploadComplete" in before.json()[0]["message"]
    assert "InProgress" in during.json()[0]["message"]


def test_an_unknown_job_is_not_found_whatever_is_asked_of_it(api, standin):
    unknown = "750Sb0000000zzzIAA"

    answers = [
        api.get(f"{standin.url}{JOBS}/{unknown}"),
        _results(api, standin, unknown),
        api.patch(f"{standin.url}{JOBS}/{unknown}", json={"state": "Aborted"}),
        api.delete(f"{standin.url}{JOBS}/{unknown}"),
    ]

    for response in answers:
        assert response.status_code == 404
        assert response.json() == [
            {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
        ]


def test_a_running_job_can_be_aborted_and_then_has_no_results(api, standin):
    standin.configure(bulk_in_progress_polls=5)
    job_id = _create(api, standin, "SELECT Id FROM Contact")["id"]
    _info(api, standin, job_id)

    aborted = api.patch(f"{standin.url}{JOBS}/{job_id}", json={"state": "Aborted"})

    assert aborted.status_code == 200
    assert aborted.json()["state"] == "Aborted"
    assert aborted.json()["id"] == job_id
    assert _info(api, standin, job_id)["state"] == "Aborted"
    results = _results(api, standin, job_id)
    assert results.status_code == 400
    assert results.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    again = api.patch(f"{standin.url}{JOBS}/{job_id}", json={"state": "Aborted"})
    assert again.status_code == 400
    assert again.json()[0]["errorCode"] == "INVALIDJOBSTATE"


def test_a_completed_job_cannot_be_aborted_nor_set_to_another_state(api, standin):
    job_id = _completed(api, standin, "SELECT Id FROM Contact")

    aborted = api.patch(f"{standin.url}{JOBS}/{job_id}", json={"state": "Aborted"})
    closed = api.patch(f"{standin.url}{JOBS}/{job_id}", json={"state": "UploadComplete"})

    assert (aborted.status_code, closed.status_code) == (400, 400)
    assert aborted.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert closed.json()[0]["errorCode"] == "INVALIDJOBSTATE"


def test_only_a_terminated_job_can_be_deleted(api, standin):
    standin.configure(bulk_in_progress_polls=1)
    job_id = _create(api, standin, "SELECT Id FROM Contact")["id"]

    running = api.delete(f"{standin.url}{JOBS}/{job_id}")
    _info(api, standin, job_id)
    _info(api, standin, job_id)  # now JobComplete
    deleted = api.delete(f"{standin.url}{JOBS}/{job_id}")

    assert running.status_code == 400
    assert running.json() == [
        {
            "message": "Error encountered when deleting the job because the job is not terminated",
            "errorCode": "API_ERROR",
        }
    ]
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.get(f"{standin.url}{JOBS}/{job_id}").status_code == 404
    assert _results(api, standin, job_id).status_code == 404


def test_all_query_jobs_are_listed(api, standin):
    first = _create(api, standin, "SELECT Id FROM Contact")["id"]
    second = _create(api, standin, "SELECT Id FROM Contact")["id"]

    listing = api.get(standin.url + JOBS).json()

    assert listing["done"] is True and listing["nextRecordsUrl"] is None
    assert [job["id"] for job in listing["records"]] == [first, second]
    assert {job["jobType"] for job in listing["records"]} == {"V2Query"}


def test_reset_forgets_the_jobs(api, standin):
    job_id = _completed(api, standin, "SELECT Id FROM Contact")

    standin.reset()

    assert api.get(f"{standin.url}{JOBS}/{job_id}").status_code == 404


# --- results --------------------------------------------------------------------------------


def test_results_come_in_sets_chained_by_locators(api, standin):
    ids = standin.add_contacts([{"LastName": f"C{n}"} for n in range(5)])
    job_id = _completed(api, standin, "SELECT Id, LastName FROM Contact")

    sets = list(_all_rows(api, standin, job_id, max_records=2))

    assert [count for _, _, count in sets] == [2, 2, 1]
    assert [len(rows) for rows, _, _ in sets] == [2, 2, 1]
    assert sets[-1][1] == "null"
    assert all(locator != "null" for _, locator, _ in sets[:-1])
    assert [row["Id"] for rows, _, _ in sets for row in rows] == ids
    assert [row["LastName"] for rows, _, _ in sets for row in rows] == [f"C{n}" for n in range(5)]


def test_a_locator_names_the_same_set_each_time_it_is_used(api, standin):
    standin.add_contacts([{"LastName": f"C{n}"} for n in range(5)])
    job_id = _completed(api, standin, "SELECT Id FROM Contact")
    locator = _results(api, standin, job_id, maxRecords=2).headers["Sforce-Locator"]

    first = _results(api, standin, job_id, maxRecords=2, locator=locator)
    second = _results(api, standin, job_id, maxRecords=2, locator=locator)
    wider = _results(api, standin, job_id, maxRecords=10, locator=locator)

    assert first.content == second.content
    assert first.headers["Sforce-NumberOfRecords"] == "2"
    assert wider.headers["Sforce-NumberOfRecords"] == "3"
    assert wider.headers["Sforce-Locator"] == "null"


def test_a_bad_locator_or_max_records_is_refused(api, standin):
    standin.add_contacts([{"LastName": f"C{n}"} for n in range(3)])
    job_id = _completed(api, standin, "SELECT Id FROM Contact")

    locator = _results(api, standin, job_id, locator="not a locator")
    max_records = _results(api, standin, job_id, maxRecords="0")

    assert (locator.status_code, max_records.status_code) == (400, 400)
    assert locator.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"
    assert max_records.json()[0]["errorCode"] == "API_ERROR"


def test_a_result_set_is_capped_at_the_standins_size_limit(api, standin):
    standin.add_contacts([{"LastName": "C"} for _ in range(MAX_RESULT_RECORDS + 1)])
    job_id = _completed(api, standin, "SELECT Id FROM Contact")

    response = _results(api, standin, job_id, maxRecords=MAX_RESULT_RECORDS * 2)

    assert response.headers["Sforce-NumberOfRecords"] == str(MAX_RESULT_RECORDS)
    assert response.headers["Sforce-Locator"] != "null"


def test_csv_quotes_every_value_and_renders_nulls_booleans_and_datetimes(api, standin):
    contact_id = standin.add_contact(
        FirstName='Ada "Bob", Jr.',
        LastName="Line\nbreak",
        Email=None,
        HasOptedOutOfEmail=True,
        Preference_Version__c=3,
    )
    stamp = standin.contact(contact_id)["SystemModstamp"]
    soql = (
        "SELECT Id, FirstName, LastName, Email, HasOptedOutOfEmail, DoNotCall, "
        "Preference_Version__c, SystemModstamp FROM Contact"
    )
    job_id = _completed(api, standin, soql)

    response = _results(api, standin, job_id)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    when = (
        stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    )
    assert response.text == (
        '"Id","FirstName","LastName","Email","HasOptedOutOfEmail","DoNotCall",'
        '"Preference_Version__c","SystemModstamp"\n'
        f'"{contact_id}","Ada ""Bob"", Jr.","Line\nbreak",,"true","false","3","{when}"\n'
    )
    (row,) = csv.DictReader(io.StringIO(response.text))
    assert row["FirstName"] == 'Ada "Bob", Jr.'
    assert row["LastName"] == "Line\nbreak"
    assert row["Email"] == ""
    assert datetime.fromisoformat(row["SystemModstamp"]) == stamp


def test_the_header_names_the_fields_as_the_query_wrote_them(api, standin):
    standin.add_contact(LastName="Okafor", HasOptedOutOfEmail=True)
    job_id = _completed(api, standin, "SELECT id, LASTNAME, hasoptedoutofemail FROM Contact")

    (row,) = csv.DictReader(io.StringIO(_results(api, standin, job_id).text))

    assert list(row) == ["id", "LASTNAME", "hasoptedoutofemail"]
    assert (row["LASTNAME"], row["hasoptedoutofemail"]) == ("Okafor", "true")


def test_the_job_chooses_the_column_delimiter_and_line_ending(api, standin):
    standin.add_contacts([{"LastName": "A|B"}, {"LastName": "C"}])
    job_id = _completed(
        api,
        standin,
        "SELECT LastName, DoNotCall FROM Contact",
        columnDelimiter="PIPE",
        lineEnding="CRLF",
    )

    text = _results(api, standin, job_id).text

    assert text == '"LastName"|"DoNotCall"\r\n"A|B"|"false"\r\n"C"|"false"\r\n'
    assert _info(api, standin, job_id)["columnDelimiter"] == "PIPE"


def test_results_are_the_snapshot_taken_when_the_job_completed(api, standin):
    standin.configure(bulk_in_progress_polls=1)
    kept = standin.add_contact(LastName="Before")
    job_id = _create(api, standin, "SELECT Id, LastName FROM Contact")["id"]
    joined = standin.add_contact(LastName="Created while queued")  # before completion
    _info(api, standin, job_id)
    _info(api, standin, job_id)  # completes: the snapshot is taken now
    api.patch(f"{standin.url}{API}/sobjects/Contact/{kept}", json={"LastName": "After"})
    standin.add_contact(LastName="Too late")
    standin.delete_contact(joined)

    (rows, _, _), *_ = _all_rows(api, standin, job_id, max_records=10)

    assert [(row["Id"], row["LastName"]) for row in rows] == [
        (kept, "Before"),
        (joined, "Created while queued"),
    ]


def test_query_all_includes_deleted_contacts_and_query_does_not(api, standin):
    live, gone = standin.add_contact(LastName="Live"), standin.add_contact(LastName="Gone")
    standin.delete_contact(gone)
    soql = "SELECT Id, IsDeleted FROM Contact"

    query = _completed(api, standin, soql)
    query_all = api.post(standin.url + JOBS, json={"operation": "queryAll", "query": soql}).json()
    assert query_all["operation"] == "queryAll"
    _info(api, standin, query_all["id"])

    def rows(job_id: str) -> list[tuple[str, str]]:
        text = _results(api, standin, job_id).text
        return [(row["Id"], row["IsDeleted"]) for row in csv.DictReader(io.StringIO(text))]

    assert rows(query) == [(live, "false")]
    assert rows(query_all["id"]) == [(live, "false"), (gone, "true")]


def test_a_where_clause_of_the_shapes_the_rest_query_takes_filters(api, standin):
    old = standin.add_contact(LastName="Old")
    boundary = window_start(standin.contact(old)["SystemModstamp"])
    newer = standin.add_contact(LastName="New")
    picked = standin.add_contact(LastName="Picked")

    window = _completed(
        api,
        standin,
        f"SELECT Id FROM Contact WHERE SystemModstamp > {boundary} ORDER BY SystemModstamp",
    )
    by_id = _completed(api, standin, f"SELECT Id FROM Contact WHERE Id IN ('{picked}')")

    def ids(job_id: str) -> list[str]:
        text = _results(api, standin, job_id).text
        return [row["Id"] for row in csv.DictReader(io.StringIO(text))]

    assert ids(window) == [newer, picked]
    assert ids(by_id) == [picked]


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"operation": "insert", "query": "SELECT Id FROM Contact"}, "INVALIDJOB"),
        ({"operation": "query"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Contact", "contentType": "JSON"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Contact", "columnDelimiter": "COLON"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Contact", "lineEnding": "CR"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT COUNT() FROM Contact"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT LastName FROM Contact GROUP BY LastName"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Contact WHERE Id IN ('x') OFFSET 5"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id, (SELECT Id FROM Tasks) FROM Contact"},
         "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Opportunity"}, "INVALID_TYPE"),
        ({"operation": "query",
          "query": "SELECT Id FROM Contact WHERE SystemModstamp > 2024-01-01T00:00:00.000Z"},
         "MALFORMED_QUERY"),
        ({"operation": "query", "query": "SELECT Id, Account.Name FROM Contact"},
         "MALFORMED_QUERY"),
        ({"operation": "query", "query": "SELECT Id, id FROM Contact"}, "MALFORMED_QUERY"),
    ],
)  # fmt: skip
def test_a_job_the_org_cannot_run_is_refused_when_created(api, standin, body, code):
    response = api.post(standin.url + JOBS, json=body)

    assert response.status_code == 400
    (error,) = response.json()
    assert error["errorCode"] == code and error["message"]
    assert api.get(standin.url + JOBS).json()["records"] == []


def test_a_field_the_orgs_contact_lacks_is_refused_as_in_the_rest_query():
    with running_standin(contact_fields=["Newsletter__c"]) as server:
        api = _api(server)
        unknown = api.post(
            server.url + JOBS,
            json={"operation": "query", "query": "SELECT Id, Giving__c FROM Contact"},
        )
        unlisted = api.post(
            server.url + JOBS,
            json={"operation": "query", "query": "SELECT Preference_Version__c FROM Contact"},
        )
        known = api.post(
            server.url + JOBS,
            json={"operation": "query", "query": "SELECT Id, newsletter__c FROM Contact"},
        )
        rest = api.get(
            f"{server.url}{API}/query/",
            params={"q": "SELECT Giving__c FROM Contact WHERE Id IN ('003Sb0000000001IAA')"},
        )

    assert unknown.status_code == 400
    assert unknown.json() == [
        {"message": "No such column 'Giving__c' on entity 'Contact'", "errorCode": "INVALID_FIELD"}
    ]
    assert unlisted.json()[0]["errorCode"] == "INVALID_FIELD"
    assert known.status_code == 200
    assert rest.json()[0]["errorCode"] == "INVALID_FIELD"


def test_jobs_pass_the_same_gate_as_the_rest_api(api, standin):
    anonymous = _http(standin).post(
        standin.url + JOBS, json={"operation": "query", "query": "SELECT Id FROM Contact"}
    )
    standin.fail("http_503", times=1, path_contains="/jobs/query")
    faulted = api.post(
        standin.url + JOBS, json={"operation": "query", "query": "SELECT Id FROM Contact"}
    )
    job_id = _completed(api, standin, "SELECT Id FROM Contact")
    standin.set_api_usage(used=100_000)
    limited = _results(api, standin, job_id)

    assert anonymous.status_code == 401
    assert anonymous.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    assert faulted.status_code == 503
    assert limited.status_code == 403
    assert limited.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert standin.api_calls == 2  # the create and the status read; refusals do not count
    assert limited.headers["Sforce-Limit-Info"] == "api-usage=100000/100000"


def test_jobs_are_not_composite_subrequests(api, standin):
    response = api.post(
        f"{standin.url}{API}/composite",
        json={
            "compositeRequest": [
                {"method": "GET", "url": f"{JOBS}/750Sb0000000001IAA", "referenceId": "job"}
            ]
        },
    )

    assert response.json()["compositeResponse"][0]["httpStatusCode"] == 404


# --- simple-salesforce's bulk2 client ----------------------------------------------------------


def _library(server: SalesforceStandIn) -> Salesforce:
    return Salesforce(
        instance_url=server.url, session_id=_token(server), session=_http(server), version="60.0"
    )


def test_simple_salesforce_bulk2_reads_every_contact_exactly(standin):
    standin.configure(bulk_in_progress_polls=2)  # the client polls until JobComplete
    standin.add_contacts(
        {
            "FirstName": f'Name, "{n}"' if n % 3 else None,
            "LastName": f"Last{n}",
            "Email": f"c{n}@example.org" if n % 5 else None,
            "HasOptedOutOfEmail": n % 7 == 0,
            "DoNotCall": n % 2 == 0,
            "Preference_Version__c": n % 11,
        }
        for n in range(2_345)
    )
    standin.delete_contact(next(iter(standin.contacts())))  # query leaves it out
    soql = (
        "SELECT Id, FirstName, LastName, Email, HasOptedOutOfEmail, DoNotCall, "
        "Preference_Version__c FROM Contact"
    )

    pages = list(_library(standin).bulk2.Contact.query(soql, max_records=500, wait=0.01))

    assert len(pages) == 5
    read = [row for page in pages for row in csv.DictReader(io.StringIO(page))]
    expected = [
        {
            "Id": record["Id"],
            "FirstName": record["FirstName"] or "",
            "LastName": record["LastName"],
            "Email": record["Email"] or "",
            "HasOptedOutOfEmail": "true" if record["HasOptedOutOfEmail"] else "false",
            "DoNotCall": "true" if record["DoNotCall"] else "false",
            "Preference_Version__c": str(record["Preference_Version__c"]),
        }
        for record in standin.contacts().values()
        if not record["IsDeleted"]
    ]
    assert len(read) == 2_344
    assert read == expected


def test_simple_salesforce_bulk2_query_all_and_an_empty_result(standin):
    gone = standin.add_contact(LastName="Gone")
    standin.delete_contact(gone)
    bulk = _library(standin).bulk2.Contact

    every = list(bulk.query_all("SELECT Id, IsDeleted FROM Contact", wait=0.01))
    live = list(bulk.query("SELECT Id FROM Contact", wait=0.01))

    assert every == [f'"Id","IsDeleted"\n"{gone}","true"\n']
    assert live == ['"Id"\n']


# --- loading many contacts --------------------------------------------------------------------


def test_a_data_load_takes_each_record_as_given_under_one_stamp(standin):
    given = standin.add_contact(LastName="First")
    next_second(standin.contact(given)["SystemModstamp"])  # else the load shares its stamp
    explicit = id18("003Sb00000000Zz")

    ids = standin.add_contacts(
        [
            {"LastName": "Plain", "Preference_Version__c": 2},
            {"lastname": "Any case", "email": "a@example.org"},
            {"Id": explicit, "LastName": "Given Id", "IsDeleted": True, "SystemModstamp": "x"},
            {"LastName": "Plain again", "Preference_Version__c": 3},
        ]
    )

    assert ids[2] == explicit
    assert ids[0] > given and ids[1] > ids[0] and ids[3] > ids[1]  # Ids go on in sequence
    plain, any_case, explicit_record, again = (standin.contact(i) for i in ids)
    assert (plain["LastName"], plain["Preference_Version__c"]) == ("Plain", 2)
    assert (any_case["LastName"], any_case["Email"]) == ("Any case", "a@example.org")
    assert explicit_record["IsDeleted"] is False  # read-only fields are not loaded
    assert explicit_record["LastName"] == "Given Id"
    assert again["Preference_Version__c"] == 3
    assert len({standin.contact(i)["SystemModstamp"] for i in ids}) == 1
    assert standin.contact(given)["SystemModstamp"] < plain["SystemModstamp"]
    assert plain["CreatedById"] == plain["LastModifiedById"] == ADMIN_USER_ID


def test_a_data_load_is_found_by_the_window_query(standin, api):
    before = standin.add_contact(LastName="Before")
    since = window_start(standin.contact(before)["SystemModstamp"])
    ids = standin.add_contacts([{"LastName": f"C{n}"} for n in range(1_000)])

    response = api.get(
        f"{standin.url}{API}/query/",
        params={
            "q": f"SELECT Id FROM Contact WHERE SystemModstamp > {since} "
            "ORDER BY SystemModstamp, Id LIMIT 2000"
        },
    )

    assert response.json()["totalSize"] == 1_000
    assert {row["Id"] for row in response.json()["records"]} == set(ids)
