"""The Salesforce stand-in speaks the protocol the connector relies on, over real HTTPS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from standins.salesforce import (
    ADMIN_USER_ID,
    API_USER_ID,
    INTEGRATION_USER_ID,
    JWT_GRANT,
    SECRET_HEADER,
    SalesforceStandIn,
    SalesforceStandInClient,
    id18,
    normalize_id,
    running_standin,
    standin_process,
)
from tests.standins.salesforce_api import next_second

API = "/services/data/v60.0"
TASKS = f"{API}/composite/sobjects/Task/Preference_Change_Id__c"


@pytest.fixture
def standin() -> Iterator[SalesforceStandIn]:
    with running_standin() as server:
        yield server


def _http(server: SalesforceStandIn | SalesforceStandInClient) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides session.verify
    session.verify = server.ca_path
    return session


def _login(server: SalesforceStandIn) -> dict[str, Any]:
    response = _http(server).post(
        server.url + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def _api(server: SalesforceStandIn) -> requests.Session:
    session = _http(server)
    session.headers["Authorization"] = "Bearer " + _login(server)["access_token"]
    return session


@pytest.fixture
def api(standin: SalesforceStandIn) -> requests.Session:
    return _api(standin)


def _contact_records(ids: list[str], **fields: Any) -> list[dict[str, Any]]:
    return [{"attributes": {"type": "Contact"}, "id": i, **fields} for i in ids]


def _task(external_id: str, who: str, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Task"},
        "Preference_Change_Id__c": external_id,
        "WhoId": who,
        "Subject": "Email opt-out",
        "Status": "Completed",
        **fields,
    }


def _query(api: requests.Session, server: SalesforceStandIn, soql: str, endpoint: str = "query"):
    return api.get(f"{server.url}{API}/{endpoint}/", params={"q": soql})


def _soql_time(value: datetime) -> str:
    """A SOQL dateTime literal as the SOQL reference documents it: whole seconds, UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _second_after(stamp: datetime) -> str:
    """The first whole second after a stamp, as a SOQL literal, once the clock has passed
    it: a record written now is stamped after it."""
    boundary = stamp.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    while datetime.now(UTC) < boundary + timedelta(milliseconds=2):  # stamps keep ms
        time.sleep(0.01)
    return _soql_time(boundary)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- OAuth ------------------------------------------------------------------------------------


def test_client_credentials_grant_issues_a_bearer_token_for_this_instance(standin):
    token = _login(standin)

    assert token["token_type"] == "Bearer"
    assert token["instance_url"] == standin.url
    assert token["access_token"] and token["issued_at"] and token["signature"]
    assert standin.api_calls == 0  # a login is not an API call
    assert standin.call_log == [("POST", "/services/oauth2/token")]


def test_wrong_client_secret_is_refused_as_invalid_client(standin):
    response = _http(standin).post(
        standin.url + "/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": standin.client_id,
              "client_secret": "wrong"},
    )  # fmt: skip

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client"


def test_unsupported_grant_type_is_refused(standin):
    response = _http(standin).post(
        standin.url + "/services/oauth2/token", data={"grant_type": "password"}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_jwt_bearer_assertion_signed_with_the_configured_key_gets_a_token(rsa_key):
    with running_standin(jwt_public_key=_public_pem(rsa_key), jwt_username="sync@u.edu") as server:
        assertion = jwt.encode(
            {
                "iss": server.client_id,
                "sub": "sync@u.edu",
                "aud": "https://login.salesforce.com",
                "exp": int(time.time()) + 180,
            },
            rsa_key,
            algorithm="RS256",
        )
        response = _http(server).post(
            server.url + "/services/oauth2/token",
            data={"grant_type": JWT_GRANT, "assertion": assertion},
        )

    assert response.status_code == 200, response.text
    assert response.json()["instance_url"] == server.url


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("other_key", "invalid_grant"),
        ("wrong_audience", "invalid_grant"),
        ("my_domain_audience", "invalid_grant"),
        ("expired", "invalid_grant"),
        ("wrong_issuer", "invalid_client_id"),
        ("wrong_user", "invalid_grant"),
    ],
)
def test_jwt_bearer_assertion_that_does_not_check_out_is_refused(rsa_key, change, error):
    with running_standin(jwt_public_key=_public_pem(rsa_key), jwt_username="sync@u.edu") as server:
        claims = {
            "iss": server.client_id,
            "sub": "sync@u.edu",
            "aud": "https://login.salesforce.com",
            "exp": int(time.time()) + 180,
        }
        key: Any = rsa_key
        if change == "other_key":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif change == "wrong_audience":
            claims["aud"] = "https://login.example.com"
        elif change == "my_domain_audience":
            claims["aud"] = server.url  # never accepted, as Salesforce documents
        elif change == "expired":
            claims["exp"] = int(time.time()) - 60
        elif change == "wrong_issuer":
            claims["iss"] = "someone-else"
        else:
            claims["sub"] = "intruder@u.edu"
        response = _http(server).post(
            server.url + "/services/oauth2/token",
            data={"grant_type": JWT_GRANT, "assertion": jwt.encode(claims, key, "RS256")},
        )

    assert response.status_code == 400
    assert response.json()["error"] == error


def test_api_call_without_a_valid_token_is_invalid_session_id(standin):
    contact_id = standin.add_contact(LastName="Okafor")
    session = _http(standin)
    session.headers["Authorization"] = "Bearer not-a-token"

    response = session.get(f"{standin.url}{API}/sobjects/Contact/{contact_id}")

    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    assert standin.api_calls == 0


# --- TLS --------------------------------------------------------------------------------------


def test_a_client_that_does_not_trust_the_generated_ca_cannot_connect(standin):
    session = requests.Session()
    session.trust_env = False  # system CAs only (certifi)

    with pytest.raises(requests.exceptions.SSLError):
        session.post(standin.url + "/services/oauth2/token", data={})


def test_the_certificate_also_names_localhost(standin):
    response = _http(standin).post(
        f"https://localhost:{standin.port}/services/oauth2/token", data={}
    )

    assert response.status_code == 400  # TLS verified; the request itself is empty


# --- contacts ---------------------------------------------------------------------------------


def test_patch_contact_answers_204_bumps_the_stamp_and_records_the_api_user(standin, api):
    contact_id = standin.add_contact(LastName="Okafor", Email="okafor@example.org")
    before = standin.contact(contact_id)
    next_second(before["SystemModstamp"])  # else the update shares its whole-second stamp

    response = api.patch(
        f"{standin.url}{API}/sobjects/Contact/{contact_id}",
        json={"HasOptedOutOfEmail": True, "Newsletter__c": False},
    )

    assert response.status_code == 204
    after = standin.contact(contact_id)
    assert after["HasOptedOutOfEmail"] is True
    assert after["Newsletter__c"] is False
    assert after["SystemModstamp"] > before["SystemModstamp"]
    assert before["LastModifiedById"] == ADMIN_USER_ID
    assert after["LastModifiedById"] == API_USER_ID


def test_get_contact_accepts_15_character_and_any_case_18_character_ids(standin, api):
    contact_id = standin.add_contact(LastName="Garcia")

    for spelling in (contact_id, contact_id[:15], contact_id.lower()):
        response = api.get(
            f"{standin.url}{API}/sobjects/Contact/{spelling}",
            params={"fields": "Id,LastName,HasOptedOutOfEmail"},
        )
        assert response.status_code == 200
        body = response.json()
        assert body["Id"] == contact_id
        assert body["LastName"] == "Garcia"
        assert body["attributes"]["type"] == "Contact"


def test_ids_look_like_salesforce_contact_ids(standin):
    ids = [standin.add_contact() for _ in range(3)]

    assert len(set(ids)) == 3
    for contact_id in ids:
        assert len(contact_id) == 18
        assert contact_id.startswith("003")
        assert id18(contact_id[:15]) == contact_id
        assert normalize_id(contact_id.lower()) == contact_id


def test_unknown_contact_is_not_found_and_a_deleted_one_is_entity_is_deleted(standin, api):
    gone = standin.add_contact(LastName="Gone")
    standin.delete_contact(gone)
    never = id18("003Sb000000ZZZZ")

    for contact_id, code in ((never, "NOT_FOUND"), (gone, "ENTITY_IS_DELETED")):
        for method in ("GET", "PATCH"):
            url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"
            response = api.request(method, url, json={"DoNotCall": True})
            assert response.status_code == 404
            assert response.json()[0]["errorCode"] == code


def test_external_update_is_made_by_the_integration_user(standin):
    contact_id = standin.add_contact(LastName="Nguyen")

    stamp = standin.external_update(contact_id, HasOptedOutOfEmail=True)

    contact = standin.contact(contact_id)
    assert contact["HasOptedOutOfEmail"] is True
    assert contact["LastModifiedById"] == INTEGRATION_USER_ID
    assert contact["SystemModstamp"] == stamp


# --- sObject Collections ----------------------------------------------------------------------


def test_collection_update_answers_per_record_in_order_with_failures_in_place(standin, api):
    ok1, bad, ok2 = (standin.add_contact() for _ in range(3))
    deleted = standin.add_contact()
    standin.delete_contact(deleted)
    standin.reject_record(bad, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Region is required")

    response = api.patch(
        f"{standin.url}{API}/composite/sobjects",
        json={
            "allOrNone": False,
            "records": _contact_records([ok1, bad, deleted, ok2], HasOptedOutOfEmail=True),
        },
    )

    assert response.status_code == 200
    results = response.json()
    assert [r["success"] for r in results] == [True, False, False, True]
    assert [r["id"] for r in results] == [ok1, bad, deleted, ok2]
    assert results[1]["errors"] == [
        {
            "statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            "message": "Region is required",
            "fields": [],
        }
    ]
    assert results[2]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert standin.contact(ok1)["HasOptedOutOfEmail"] is True
    assert standin.contact(ok2)["HasOptedOutOfEmail"] is True
    assert standin.contact(bad)["HasOptedOutOfEmail"] is False


def test_collection_of_more_than_200_records_is_refused(standin, api):
    ids = [standin.add_contact() for _ in range(201)]

    response = api.patch(
        f"{standin.url}{API}/composite/sobjects",
        json={"allOrNone": False, "records": _contact_records(ids, DoNotCall=True)},
    )

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert not any(c["DoNotCall"] for c in standin.contacts().values())


def test_all_or_none_collection_rolls_back_every_record(standin, api):
    good, bad = standin.add_contact(), standin.add_contact()
    standin.reject_record(bad, "INVALID_FIELD", "No such column")

    response = api.patch(
        f"{standin.url}{API}/composite/sobjects",
        json={"allOrNone": True, "records": _contact_records([good, bad], DoNotCall=True)},
    )

    results = response.json()
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert standin.contact(good)["DoNotCall"] is False


@pytest.mark.parametrize("whole_seconds", [True, False])
def test_records_written_in_one_call_share_a_stamp_and_each_later_call_is_later(whole_seconds):
    # Whole-second stamps (a real org's, the default): a call is later once the clock has
    # moved on a second. Milliseconds: every call is later than the last, however soon.
    with running_standin(whole_second_modstamps=whole_seconds) as server:
        api = _api(server)
        ids = [server.add_contact() for _ in range(3)]
        url = f"{server.url}{API}/composite/sobjects"

        api.patch(url, json={"records": _contact_records(ids, DoNotCall=True)})
        first = {server.contact(i)["SystemModstamp"] for i in ids}
        if whole_seconds:
            next_second(min(first))
        api.patch(url, json={"records": _contact_records(ids[:1], DoNotCall=False)})
        later = server.contact(ids[0])["SystemModstamp"]

    assert len(first) == 1
    assert later > first.pop()


def test_auto_create_makes_unknown_contacts_on_their_first_update():
    with running_standin(auto_create=True) as server:
        api = _api(server)
        contact_id = id18("003Dn0000000042")

        response = api.patch(
            f"{server.url}{API}/composite/sobjects",
            json={"records": _contact_records([contact_id], HasOptedOutOfEmail=True)},
        )

        assert response.json()[0]["success"] is True
        assert server.contact(contact_id)["HasOptedOutOfEmail"] is True


def test_whole_second_modstamps_are_never_finer_than_a_second():
    with running_standin(whole_second_modstamps=True) as server:
        ids = [server.add_contact() for _ in range(3)]
        stamps = [server.contact(i)["SystemModstamp"] for i in ids]

    assert all(stamp.microsecond == 0 for stamp in stamps)
    assert stamps == sorted(stamps)


# --- Task upserts -----------------------------------------------------------------------------


def test_task_collection_upsert_creates_then_updates_without_duplicates(standin, api):
    who = standin.add_contact()
    records = [_task(f"change-{n}", who, Description=f"note {n}") for n in range(3)]

    first = api.patch(standin.url + TASKS, json={"allOrNone": False, "records": records})
    records[0]["Description"] = "note 0, corrected"
    second = api.patch(standin.url + TASKS, json={"allOrNone": False, "records": records})

    assert [r["created"] for r in first.json()] == [True, True, True]
    assert [r["created"] for r in second.json()] == [False, False, False]
    assert [r["id"] for r in first.json()] == [r["id"] for r in second.json()]
    assert len(standin.tasks()) == 3
    assert standin.task("change-0")["Description"] == "note 0, corrected"
    assert standin.task("change-1")["WhoId"] == who


def test_duplicate_external_ids_in_one_request_fail_and_others_land(standin, api):
    who = standin.add_contact()
    records = [_task("same", who), _task("other", who), _task("same", who)]

    results = api.patch(standin.url + TASKS, json={"records": records}).json()

    assert [r["success"] for r in results] == [False, True, False]
    assert results[0]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    assert [t["Preference_Change_Id__c"] for t in standin.tasks()] == ["other"]


def test_task_for_a_deleted_contact_fails_with_entity_is_deleted(standin, api):
    who = standin.add_contact()
    standin.delete_contact(who)

    results = api.patch(standin.url + TASKS, json={"records": [_task("c1", who)]}).json()

    assert results[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert standin.tasks() == []


def test_single_task_upsert_answers_201_then_200(standin, api):
    who = standin.add_contact()
    url = f"{standin.url}{API}/sobjects/Task/Preference_Change_Id__c/change-9"

    created = api.patch(url, json={"WhoId": who, "Subject": "Note"})
    updated = api.patch(url, json={"WhoId": who, "Subject": "Note, again"})

    assert created.status_code == 201
    assert created.json()["created"] is True
    assert updated.status_code == 200
    assert updated.json() == {
        "id": created.json()["id"],
        "success": True,
        "errors": [],
        "created": False,
    }
    assert len(standin.tasks()) == 1
    assert standin.task("change-9")["Subject"] == "Note, again"


def test_upsert_on_a_field_that_is_not_the_external_id_is_not_found(standin, api):
    response = api.patch(
        f"{standin.url}{API}/composite/sobjects/Task/Subject", json={"records": []}
    )

    assert response.status_code == 404
    assert response.json()[0]["errorCode"] == "NOT_FOUND"


# --- composite --------------------------------------------------------------------------------


def _sub(reference: str, url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "method": "PATCH",
        "url": url,
        "referenceId": reference,
        "body": {"allOrNone": False, "records": records},
    }


def test_composite_of_200_updates_and_200_tasks_is_one_api_call(standin, api):
    ids = [standin.add_contact() for _ in range(200)]

    response = api.post(
        f"{standin.url}{API}/composite",
        json={
            "allOrNone": False,
            "compositeRequest": [
                _sub("contacts", f"{API}/composite/sobjects", _contact_records(ids, DoNotCall=1)),
                _sub("tasks", TASKS, [_task(f"c{n}", i) for n, i in enumerate(ids)]),
            ],
        },
    )

    assert response.status_code == 200
    answers = {a["referenceId"]: a for a in response.json()["compositeResponse"]}
    assert answers["contacts"]["httpStatusCode"] == 200
    assert all(r["success"] for r in answers["contacts"]["body"])
    assert all(r["created"] for r in answers["tasks"]["body"])
    assert standin.api_calls == 1
    assert response.headers["Sforce-Limit-Info"] == "api-usage=1/100000"
    assert all(c["DoNotCall"] for c in standin.contacts().values())
    assert len(standin.tasks()) == 200


@pytest.mark.parametrize(("subrequests", "collections"), [(26, 0), (6, 6)])
def test_composite_refuses_more_than_25_subrequests_or_5_collections(
    standin, api, subrequests, collections
):
    contact_id = standin.add_contact()
    batch = [
        _sub(f"c{n}", f"{API}/composite/sobjects", _contact_records([contact_id]))
        for n in range(collections)
    ] + [
        {"method": "GET", "url": f"{API}/sobjects/Contact/{contact_id}", "referenceId": f"g{n}"}
        for n in range(subrequests - collections)
    ]

    response = api.post(f"{standin.url}{API}/composite", json={"compositeRequest": batch})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "LIMIT_EXCEEDED"


def test_composite_all_or_none_rolls_back_earlier_subrequests(standin, api):
    contact_id = standin.add_contact()
    missing = id18("003Sb000000ZZZZ")

    response = api.post(
        f"{standin.url}{API}/composite",
        json={
            "allOrNone": True,
            "compositeRequest": [
                {
                    "method": "PATCH",
                    "url": f"{API}/sobjects/Contact/{contact_id}",
                    "referenceId": "first",
                    "body": {"DoNotCall": True},
                },
                {
                    "method": "PATCH",
                    "url": f"{API}/sobjects/Contact/{missing}",
                    "referenceId": "second",
                    "body": {"DoNotCall": True},
                },
            ],
        },
    )

    first, second = response.json()["compositeResponse"]
    assert first["httpStatusCode"] == 400
    assert first["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert second["body"][0]["errorCode"] == "NOT_FOUND"
    assert standin.contact(contact_id)["DoNotCall"] is False


# --- SOQL and getUpdated ----------------------------------------------------------------------


def test_soql_window_query_pages_in_order_of_stamp_then_id():
    with running_standin(page_size=3) as server:
        start = datetime.now(UTC) - timedelta(seconds=1)
        ids = [server.add_contact(LastName=f"C{n}") for n in range(8)]
        api = _api(server)

        pages = [
            _query(
                api,
                server,
                f"SELECT Id, LastName, SystemModstamp FROM Contact "
                f"WHERE SystemModstamp > {_soql_time(start)} ORDER BY SystemModstamp, Id",
            ).json()
        ]
        while not pages[-1]["done"]:
            pages.append(api.get(server.url + pages[-1]["nextRecordsUrl"]).json())

    assert [len(p["records"]) for p in pages] == [3, 3, 2]
    assert {p["totalSize"] for p in pages} == {8}
    records = [r for p in pages for r in p["records"]]
    assert [r["Id"] for r in records] == ids
    assert records[0]["attributes"] == {
        "type": "Contact",
        "url": f"{API}/sobjects/Contact/{ids[0]}",
    }
    assert records[0]["SystemModstamp"].endswith("+0000")
    assert server.api_calls == 3


def test_soql_window_has_an_inclusive_upper_bound_and_a_limit():
    # Whole-second stamps, as a real org's: the contacts written within the second after
    # `until` begins are stamped `until` exactly, so the upper bound's `<=` is what keeps them.
    with running_standin(whole_second_modstamps=True) as server:
        api = _api(server)
        since = server.contact(server.add_contact())["SystemModstamp"]
        until = _second_after(since)
        inside = [server.add_contact() for _ in range(2)]
        _second_after(datetime.fromisoformat(until))
        server.add_contact()  # after the window

        def select(where: str) -> list[str]:
            response = _query(api, server, f"SELECT Id FROM Contact WHERE {where}")
            assert response.status_code == 200, response.text
            return [r["Id"] for r in response.json()["records"]]

        bounded = select(
            f"SystemModstamp > {_soql_time(since)} AND SystemModstamp <= {until} "
            "ORDER BY SystemModstamp, Id"
        )
        limited = select(f"SystemModstamp > {_soql_time(since)} ORDER BY SystemModstamp LIMIT 1")

    assert {server.contact(i)["SystemModstamp"] for i in inside} == {datetime.fromisoformat(until)}
    assert bounded == inside
    assert limited == inside[:1]


def test_query_all_includes_deleted_contacts_and_query_does_not(standin, api):
    kept, deleted = standin.add_contact(), standin.add_contact()
    standin.delete_contact(deleted)
    soql = (
        "SELECT Id, IsDeleted FROM Contact WHERE SystemModstamp > 2000-01-01T00:00:00Z "
        "ORDER BY SystemModstamp, Id"
    )

    live = _query(api, standin, soql).json()["records"]
    every = _query(api, standin, soql, endpoint="queryAll").json()["records"]

    assert [r["Id"] for r in live] == [kept]
    assert [(r["Id"], r["IsDeleted"]) for r in every] == [(kept, False), (deleted, True)]


def test_soql_by_id_list_returns_those_contacts(standin, api):
    ids = [standin.add_contact(LastName=f"C{n}") for n in range(4)]

    response = _query(
        api, standin, f"SELECT Id, LastName FROM Contact WHERE Id IN ('{ids[2]}', '{ids[0][:15]}')"
    )

    assert sorted(r["Id"] for r in response.json()["records"]) == sorted([ids[0], ids[2]])


@pytest.mark.parametrize(
    "soql",
    [
        "SELECT Id FROM Contact WHERE",
        "SELECT Id Contact",
        "SELECT Id FROM Contact WHERE LastName = 'Okafor' AND Email = 'x' OR DoNotCall = true",
        "SELECT Id FROM Contact WHERE SystemModstamp > LAST_FORTNIGHT",
        "SELECT Id, Id FROM Contact WHERE Id IN ('003Sb0000000001IAA')",
        "SELECT COUNT() FROM Contact",
        "SELECT Id, Account.Name FROM Contact",
    ],
)
def test_soql_the_standin_does_not_speak_is_a_malformed_query(standin, api, soql):
    response = _query(api, standin, soql)

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_an_unknown_query_locator_is_refused(standin, api):
    response = api.get(f"{standin.url}{API}/query/01gNOPE-2000")

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_get_updated_lists_ids_changed_in_the_window(standin, api):
    before = standin.add_contact()
    start = next_second(standin.contact(before)["SystemModstamp"])
    changed = standin.add_contact()
    end = datetime.now(UTC) + timedelta(seconds=1)

    response = api.get(
        f"{standin.url}{API}/sobjects/Contact/updated/",
        params={"start": start.isoformat(), "end": end.isoformat()},
    )

    assert response.json()["ids"] == [changed]
    assert before not in response.json()["ids"]
    assert response.json()["latestDateCovered"].endswith("+0000")


def test_a_declared_schema_refuses_unknown_fields():
    with running_standin(contact_fields=["Newsletter__c"]) as server:
        contact_id = server.add_contact()
        api = _api(server)

        known = api.patch(
            f"{server.url}{API}/sobjects/Contact/{contact_id}", json={"Newsletter__c": True}
        )
        unknown = api.patch(
            f"{server.url}{API}/sobjects/Contact/{contact_id}", json={"Events__c": True}
        )
        query = _query(api, server, f"SELECT Events__c FROM Contact WHERE Id IN ('{contact_id}')")

    assert known.status_code == 204
    assert unknown.status_code == 400
    assert unknown.json()[0]["errorCode"] == "INVALID_FIELD"
    assert query.json()[0]["errorCode"] == "INVALID_FIELD"


# --- limits -----------------------------------------------------------------------------------


def test_the_daily_allowance_is_reported_and_enforced(standin, api):
    contact_id = standin.add_contact()
    standin.set_api_usage(used=4, allowance=5)
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"

    last_allowed = api.get(url)
    refused = api.get(url)

    assert last_allowed.status_code == 200
    assert last_allowed.headers["Sforce-Limit-Info"] == "api-usage=5/5"
    assert refused.status_code == 403
    assert refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=5/5"


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("http_503", 503, "SERVER_UNAVAILABLE"),
        ("http_500", 500, "UNKNOWN_EXCEPTION"),
        ("unable_to_lock_row", 400, "UNABLE_TO_LOCK_ROW"),
        ("request_limit_exceeded", 403, "REQUEST_LIMIT_EXCEEDED"),
        ("expire_sessions", 401, "INVALID_SESSION_ID"),
    ],
)
def test_a_fault_fails_the_next_calls_then_clears(standin, kind, status, code):
    contact_id = standin.add_contact()
    api = _api(standin)
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"
    standin.fail(kind, times=2)

    failures = [api.patch(url, json={"DoNotCall": True}) for _ in range(2)]
    if kind == "expire_sessions":
        api = _api(standin)  # the old token is gone for good; a new login works
    after = api.patch(url, json={"DoNotCall": True})

    assert [r.status_code for r in failures] == [status, status]
    assert [r.json()[0]["errorCode"] for r in failures] == [code, code]
    assert after.status_code == 204
    assert standin.api_calls == 1  # injected failures are not counted


def test_a_fault_can_target_one_path_and_spares_the_token_endpoint(standin):
    contact_id = standin.add_contact()
    standin.fail("http_503", path_contains="/query")
    standin.fail("http_500")  # no path: the REST API only, never the login

    api = _api(standin)  # logs in despite both faults
    query = _query(api, standin, f"SELECT Id FROM Contact WHERE Id IN ('{contact_id}')")

    assert query.status_code == 503


def test_a_fault_for_seconds_ends_by_itself(standin, api):
    contact_id = standin.add_contact()
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"
    standin.fail("http_503", for_seconds=0.3)

    during = api.get(url).status_code
    time.sleep(0.35)
    after = api.get(url).status_code

    assert (during, after) == (503, 200)


def test_a_fault_until_a_condition_holds(standin, api):
    contact_id = standin.add_contact()
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"
    recovered = threading.Event()
    standin.fail("unable_to_lock_row", until=recovered.is_set)

    during = [api.get(url).status_code for _ in range(3)]
    recovered.set()

    assert during == [400, 400, 400]
    assert api.get(url).status_code == 200


def test_latency_delays_the_answer(standin, api):
    contact_id = standin.add_contact()
    standin.fail("latency", seconds=0.3, times=1)

    started = time.monotonic()
    response = api.get(f"{standin.url}{API}/sobjects/Contact/{contact_id}")

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_timeout_fault_holds_the_request_past_the_clients_timeout(standin, api):
    contact_id = standin.add_contact()
    standin.fail("timeout", seconds=30, times=1)

    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.get(f"{standin.url}{API}/sobjects/Contact/{contact_id}", timeout=0.3)
    standin.stop()  # prompt even with the request still held

    assert time.monotonic() - started < 3


def test_a_per_record_rejection_can_be_temporary(standin, api):
    contact_id = standin.add_contact()
    standin.reject_record(contact_id, "UNABLE_TO_LOCK_ROW", times=1)
    url = f"{standin.url}{API}/composite/sobjects"
    records = _contact_records([contact_id], DoNotCall=True)

    first = api.patch(url, json={"records": records}).json()[0]
    second = api.patch(url, json={"records": records}).json()[0]

    assert first["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert second["success"] is True


def test_expire_sessions_invalidates_every_token_issued_so_far(standin, api):
    contact_id = standin.add_contact()
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"

    standin.expire_sessions()

    assert api.get(url).status_code == 401
    assert _api(standin).get(url).status_code == 200


# --- control, processes, persistence ---------------------------------------------------------


def test_control_endpoints_need_the_client_secret(standin):
    http = _http(standin)

    anonymous = http.get(standin.url + "/__standin__/state")
    wrong = http.get(standin.url + "/__standin__/state", headers={SECRET_HEADER: "guess"})
    right = http.get(
        standin.url + "/__standin__/state", headers={SECRET_HEADER: standin.client_secret}
    )

    assert (anonymous.status_code, wrong.status_code, right.status_code) == (403, 403, 200)


def test_a_client_drives_the_standin_over_https(standin):
    remote = SalesforceStandInClient(
        standin.url, standin.ca_path, standin.client_secret, standin.client_id
    )
    contact_id = remote.add_contact(LastName="Remote")
    api = _api(standin)
    url = f"{standin.url}{API}/sobjects/Contact/{contact_id}"

    remote.fail("http_503", times=1)
    assert api.get(url).status_code == 503
    remote.reject_record(contact_id, "INVALID_FIELD", "No such column")
    assert api.patch(url, json={"DoNotCall": True}).json()[0]["errorCode"] == "INVALID_FIELD"
    remote.clear_faults()
    assert api.patch(url, json={"DoNotCall": True}).status_code == 204

    stamp = remote.external_update(contact_id, HasOptedOutOfEmail=True)
    contact = remote.contact(contact_id)
    assert contact["HasOptedOutOfEmail"] is True
    assert contact["SystemModstamp"] == stamp
    assert contact["LastModifiedById"] == INTEGRATION_USER_ID
    assert remote.api_calls == 2
    assert remote.api_usage == (2, 100_000)
    assert ("GET", f"{API}/sobjects/Contact/{contact_id}") in remote.call_log

    remote.reset()
    assert remote.contact(contact_id) is None
    assert remote.api_calls == 0
    assert api.get(url).status_code == 404  # tokens survive a reset; the contact does not
    remote.close()


def test_the_standin_runs_in_another_process_and_keeps_state_in_its_file(tmp_path):
    state = tmp_path / "salesforce.json"
    args = ["--state-file", str(state)]

    with standin_process(args=args) as remote:
        contact_id = remote.add_contact(LastName="Persistent")
        remote.external_update(contact_id, DoNotCall=True)
        first_ca = remote.ca_path
    with standin_process(args=args) as remote:
        contact = remote.contact(contact_id)
        second_ca = remote.ca_path
        remote.fail("http_503", times=1)
        faults = remote.state(records=False)["faults"]

    assert contact["LastName"] == "Persistent"
    assert contact["DoNotCall"] is True
    assert first_ca == second_ca  # the demo's SALESFORCE_CA_BUNDLE stays valid
    assert [f["kind"] for f in faults] == ["http_503"]


def test_concurrent_calls_are_all_applied_and_counted(standin):
    ids = [standin.add_contact() for _ in range(10)]
    errors: list[BaseException] = []

    def work(contact_id: str) -> None:
        try:
            api = _api(standin)
            for n in range(5):
                response = api.patch(
                    f"{standin.url}{API}/sobjects/Contact/{contact_id}", json={"Count__c": n}
                )
                assert response.status_code == 204
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert standin.api_calls == 50
    assert all(standin.contact(i)["Count__c"] == 4 for i in ids)


def test_stop_is_prompt_with_an_idle_keep_alive_connection(api, standin):
    api.get(f"{standin.url}{API}/query/", params={"q": "bad"})

    started = time.monotonic()
    standin.stop()

    assert time.monotonic() - started < 1
